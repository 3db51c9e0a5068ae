#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

int proto_err_vset(struct proto_err *err, enum proto_err_class cls, int code,
                   const char *fmt, va_list ap)
{
	if (err == NULL || err->cls != PERR_NONE)
		return code;
	err->cls = cls;
	err->code = code;
	vsnprintf(err->text, sizeof(err->text), fmt, ap);
	return code;
}

int proto_err_set(struct proto_err *err, enum proto_err_class cls, int code,
                  const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	proto_err_vset(err, cls, code, fmt, ap);
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

void proto_fate_init(struct proto_fate *f, const char *proto, const char *label,
                     void (*died)(void *ctx), void *ctx)
{
	memset(f, 0, sizeof(*f));
	f->proto = proto;
	f->label = label;
	f->died = died;
	f->ctx = ctx;
}

int proto_fate_fail(struct proto_fate *f, const struct proto_err *e)
{
	if (!f->dead) {
		f->dead = true;
		f->err = *e;
		if (f->err.code == 0)
			f->err.code = -EIO;
		if (f->err.cls == PERR_NONE)
			f->err.cls = PERR_LOCAL;
		log_debug("%s %s: connection failed: %s",
		          f->proto ? f->proto : "", f->label ? f->label : "",
		          f->err.text);
		if (f->died != NULL)
			f->died(f->ctx);
	}
	return f->err.code;
}

int proto_fate_failf(struct proto_fate *f, enum proto_err_class cls, int code,
                     const char *fmt, ...)
{
	struct proto_err e = {0};
	va_list ap;

	va_start(ap, fmt);
	proto_err_vset(&e, cls, code, fmt, ap);
	va_end(ap);
	return proto_fate_fail(f, &e);
}

int proto_fate_rc(const struct proto_fate *f, struct proto_err *err)
{
	if (err != NULL && err->cls == PERR_NONE)
		*err = f->err;
	return f->err.code;
}

const struct proto_err *proto_fate_error(const struct proto_fate *f)
{
	return f->dead ? &f->err : NULL;
}
