/* Placeholders for "mailfs status" and "mailfs fetch" (fs/cmd.h), so that
 * mailfs links until they are written. */
#include "fs/cmd.h"

#include <stdio.h>

int fs_cmd_status(int argc, char **argv)
{
	(void)argc;
	fprintf(stderr, "mailfs %s: not implemented yet\n", argv[0]);
	return 2;
}

int fs_cmd_fetch(int argc, char **argv)
{
	(void)argc;
	fprintf(stderr, "mailfs %s: not implemented yet\n", argv[0]);
	return 2;
}
