#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int proto_err_set(struct proto_err *err, enum proto_err_class cls, int code,
                  const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || err->cls != PERR_NONE)
		return code;
	err->cls = cls;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->text, sizeof(err->text), fmt, ap);
	va_end(ap);
	return code;
}

void proto_err_clear(struct proto_err *err)
{
	if (err == NULL)
		return;
	memset(err, 0, sizeof(*err));
}

const char *proto_err_class_name(enum proto_err_class cls)
{
	switch (cls) {
	case PERR_NONE: return "no error";
	case PERR_RESOLVE: return "host lookup";
	case PERR_CONNECT: return "connection";
	case PERR_TIMEOUT: return "timeout";
	case PERR_TLS: return "TLS";
	case PERR_TLS_VERIFY: return "TLS certificate";
	case PERR_NOTLS: return "STARTTLS";
	case PERR_PROTOCOL: return "protocol";
	case PERR_NO: return "server refused";
	case PERR_BAD: return "server rejected command";
	case PERR_AUTH: return "authentication";
	case PERR_BYE: return "server closed connection";
	case PERR_BUSY: return "server busy";
	case PERR_LOCAL: return "local";
	}
	return "unknown";
}
