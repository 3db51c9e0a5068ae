/* The commands of fs/cmd.h: each is a file of its own. */
#include "fs/cmd.h"

#include "fs/fetch.h"
#include "fs/status.h"

int fs_cmd_status(int argc, char **argv)
{
	return fs_status_main(argc, argv);
}

int fs_cmd_fetch(int argc, char **argv)
{
	return fs_fetch_main(argc, argv);
}
