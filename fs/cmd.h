/* mailfs's commands besides mounting: `mailfs status` and `mailfs fetch`.
 * Each is given the arguments from its own name on (argv[0] is "status"
 * or "fetch") and returns the process's exit status.  They run while a
 * mount is up, in a process of their own, and talk to the mount through
 * the mount point only (the cache belongs to the mounted mailfs). */
#ifndef MAILFS_FS_CMD_H
#define MAILFS_FS_CMD_H

int fs_cmd_status(int argc, char **argv);
int fs_cmd_fetch(int argc, char **argv);

#endif
