#include "fs/attr.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void fs_attr_msg_name(uint32_t uid, char name[FS_ATTR_NAME_SIZE])
{
	snprintf(name, FS_ATTR_NAME_SIZE, "%" PRIu32 ".eml", uid);
}

bool fs_attr_parse_name(const char *name, uint32_t *uid_r)
{
	unsigned long v;
	char *end;

	if (name[0] < '1' || name[0] > '9')
		return false;
	v = strtoul(name, &end, 10);
	if (strcmp(end, ".eml") != 0 || v == 0 || v > UINT32_MAX)
		return false;
	*uid_r = (uint32_t)v;
	return true;
}

void fs_attr_dir(const struct mailfs *fs, fuse_ino_t ino, mode_t perm,
                 nlink_t nlink, int64_t mtime, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFDIR | perm;
	st->st_nlink = nlink;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_size = 4096;
	st->st_blocks = 8;
	st->st_blksize = 4096;
	st->st_mtime = st->st_ctime = st->st_atime = (time_t)mtime;
}

void fs_attr_file(const struct mailfs *fs, fuse_ino_t ino, mode_t perm,
                  uint64_t size, int64_t mtime, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFREG | perm;
	st->st_nlink = 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_size = (off_t)size;
	st->st_blocks = (blkcnt_t)((size + 511) / 512);
	st->st_blksize = 4096;
	st->st_mtime = st->st_ctime = st->st_atime = (time_t)mtime;
}

char *fs_attr_flags_normalise(const char *value, size_t size)
{
	static const char *const system[] = {
	        "\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"};
	char *out = malloc(size + 1), *o = out;
	size_t i = 0;

	if (out == NULL)
		return NULL;
	while (i < size) {
		size_t start, len;
		bool ok = true;

		while (i < size && (value[i] == ' ' || value[i] == '\t' ||
		                    value[i] == '\n'))
			i++;
		if (i >= size)
			break;
		start = i;
		while (i < size && value[i] != ' ' && value[i] != '\t' &&
		       value[i] != '\n')
			i++;
		len = i - start;
		if (value[start] == '\\') {
			ok = false;
			for (size_t k = 0; k < 5; k++)
				if (strlen(system[k]) == len &&
				    strncasecmp(system[k], value + start,
				                len) == 0)
					ok = true;
		} else {
			for (size_t k = start; k < i; k++) {
				unsigned char ch = (unsigned char)value[k];

				if (ch <= 0x20 || ch >= 0x7f ||
				    strchr("(){%*\"\\]", ch) != NULL)
					ok = false;
			}
		}
		if (!ok) {
			free(out);
			return NULL;
		}
		if (o != out)
			*o++ = ' ';
		memcpy(o, value + start, len);
		o += len;
	}
	*o = '\0';
	return out;
}

bool fs_attr_xattr_foreign(const char *name)
{
	return strncmp(name, "user.", 5) != 0;
}
