#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_err[1024];

const char *wmat_last_error(void) { return g_err; }

void wmat_clear_error(void) { g_err[0] = '\0'; }

int wmat_set_error(int status, const char *fmt, ...)
{
    /* Format into a scratch buffer first: callers may pass wmat_last_error()
     * itself as an argument to add context to a message. */
    char tmp[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(g_err, tmp, sizeof g_err);
    return status;
}

const char *wmat_status_str(int status)
{
    switch (status) {
    case WMAT_OK: return "ok";
    case WMAT_ERR_NOMEM: return "out of memory";
    case WMAT_ERR_IO: return "I/O error";
    case WMAT_ERR_FORMAT: return "bad file";
    case WMAT_ERR_INVALID: return "invalid argument";
    case WMAT_ERR_UNSUPPORTED: return "unsupported";
    case WMAT_ERR_NUMERIC: return "numerical failure";
    case WMAT_ERR_CANCELLED: return "cancelled";
    default: return "internal error";
    }
}
