/* The subcommands of mailfs that do not mount: "mailfs status ..." and
 * "mailfs fetch ...".
 *
 * fs/main.c calls them when the first argument is "status" or "fetch",
 * before any option is parsed, with argv[0] the subcommand's name
 * ("status", "fetch") and argv[1..argc-1] the rest of the command line.
 * The value returned is mailfs's exit status (0: success).  An account
 * NAME or a MOUNTPOINT given to them is resolved with fs_config_find()
 * (fs/config.h).  The names "status" and "fetch" are therefore never
 * account names (fs/config.c refuses them). */
#ifndef MAILFS_FS_CMD_H
#define MAILFS_FS_CMD_H

/* mailfs status [MOUNTPOINT|NAME] */
int fs_cmd_status(int argc, char **argv);

/* mailfs fetch PATH */
int fs_cmd_fetch(int argc, char **argv);

#endif
