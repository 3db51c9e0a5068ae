#include "proto/b64.h"

const char b64_std[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const char b64_imap[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

int b64_value(const char *alphabet, unsigned char ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return ch - 'A';
	if (ch >= 'a' && ch <= 'z')
		return ch - 'a' + 26;
	if (ch >= '0' && ch <= '9')
		return ch - '0' + 52;
	if (ch == '+')
		return 62;
	if (ch == (unsigned char)alphabet[63])
		return 63;
	return -1;
}

char *b64_put(char *o, const unsigned char *in, size_t n, const char *alphabet,
              bool pad)
{
	const char *d = alphabet;
	size_t i;

	for (i = 0; i + 3 <= n; i += 3) {
		*o++ = d[in[i] >> 2];
		*o++ = d[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
		*o++ = d[((in[i + 1] & 0x0f) << 2) | (in[i + 2] >> 6)];
		*o++ = d[in[i + 2] & 0x3f];
	}
	if (n - i == 1) {
		*o++ = d[in[i] >> 2];
		*o++ = d[(in[i] & 3) << 4];
		if (pad) {
			*o++ = '=';
			*o++ = '=';
		}
	} else if (n - i == 2) {
		*o++ = d[in[i] >> 2];
		*o++ = d[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
		*o++ = d[(in[i + 1] & 0x0f) << 2];
		if (pad)
			*o++ = '=';
	}
	return o;
}
