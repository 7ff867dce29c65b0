/*
 * error.c - the codes of docs/ERRORS.md and how a failure is reported.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strerrorname_np */
#endif

#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* In the order of docs/ERRORS.md (a test compares them). */
static const char *const CODE_STRINGS[SHMLINK_CODE_COUNT] = {
    [SHMLINK_OK] = "OK",
    [SHMLINK_ERR_CLOSED] = "ERR_SHMLINK_CLOSED",
    [SHMLINK_ERR_PEER_CLOSED] = "ERR_SHMLINK_PEER_CLOSED",
    [SHMLINK_ERR_PEER_REJECTED] = "ERR_SHMLINK_PEER_REJECTED",
    [SHMLINK_ERR_WOULD_BLOCK] = "ERR_SHMLINK_WOULD_BLOCK",
    [SHMLINK_ERR_TIMED_OUT] = "ERR_SHMLINK_TIMED_OUT",
    [SHMLINK_ERR_PROTOCOL_VIOLATION] = "ERR_SHMLINK_PROTOCOL_VIOLATION",
    [SHMLINK_ERR_PEER_INCOMPATIBLE] = "ERR_SHMLINK_PEER_INCOMPATIBLE",
    [SHMLINK_ERR_LIMIT_EXCEEDED] = "ERR_SHMLINK_LIMIT_EXCEEDED",
    [SHMLINK_ERR_REGION_UNSEALED] = "ERR_SHMLINK_REGION_UNSEALED",
    [SHMLINK_ERR_REGION_SIZE_MISMATCH] = "ERR_SHMLINK_REGION_SIZE_MISMATCH",
    [SHMLINK_ERR_REGION_NOT_MEMFD] = "ERR_SHMLINK_REGION_NOT_MEMFD",
    [SHMLINK_ERR_REGION_NOT_SHMEM] = "ERR_SHMLINK_REGION_NOT_SHMEM",
    [SHMLINK_ERR_REGION_WRITABLE] = "ERR_SHMLINK_REGION_WRITABLE",
    [SHMLINK_ERR_REGION_TRANSFERRED] = "ERR_SHMLINK_REGION_TRANSFERRED",
    [SHMLINK_ERR_REGION_FROZEN] = "ERR_SHMLINK_REGION_FROZEN",
    [SHMLINK_ERR_REGION_BUSY] = "ERR_SHMLINK_REGION_BUSY",
    [SHMLINK_ERR_REGION_CLOSED] = "ERR_SHMLINK_REGION_CLOSED",
    [SHMLINK_ERR_REGION_TOO_LARGE] = "ERR_SHMLINK_REGION_TOO_LARGE",
    [SHMLINK_ERR_TOO_MANY_REGIONS] = "ERR_SHMLINK_TOO_MANY_REGIONS",
    [SHMLINK_ERR_PAYLOAD_TOO_LARGE] = "ERR_SHMLINK_PAYLOAD_TOO_LARGE",
    [SHMLINK_ERR_FDS_TRUNCATED] = "ERR_SHMLINK_FDS_TRUNCATED",
    [SHMLINK_ERR_INVALID_ARG] = "ERR_SHMLINK_INVALID_ARG",
    [SHMLINK_ERR_ZERO_COPY_UNAVAILABLE] = "ERR_SHMLINK_ZERO_COPY_UNAVAILABLE",
    [SHMLINK_ERR_UNSUPPORTED] = "ERR_SHMLINK_UNSUPPORTED",
    [SHMLINK_ERR_RUNTIME] = "ERR_SHMLINK_RUNTIME",
    [SHMLINK_ERR_OS] = "ERR_SHMLINK_OS",
    [SHMLINK_ERR_BINARY_NOT_FOUND] = "ERR_SHMLINK_BINARY_NOT_FOUND",
};

const char *shmlink_code_string(shmlink_code code)
{
    if ((unsigned)code < SHMLINK_CODE_COUNT && CODE_STRINGS[code] != NULL)
        return CODE_STRINGS[code];
    return "ERR_SHMLINK_UNKNOWN";
}

const char *errno_name(int errnum)
{
    const char *name = strerrorname_np(errnum);
    return name != NULL ? name : "errno";
}

static shmlink_code fill(shmlink_error *err, shmlink_code code, const char *op,
                         const char *syscall, int errnum, const char *fmt, va_list ap)
{
    if (err == NULL)
        return code;
    err->code = code;
    err->op = op;
    err->syscall = syscall;
    err->errnum = errnum;
    int used;
    if (syscall != NULL && errnum != 0)
        used = snprintf(err->message, sizeof err->message, "%s: %s failed: %s (%s); ", op,
                        syscall, errno_name(errnum), strerror(errnum));
    else
        used = snprintf(err->message, sizeof err->message, "%s: ", op);
    if (used < 0 || (size_t)used >= sizeof err->message)
        return code;
    vsnprintf(err->message + used, sizeof err->message - (size_t)used, fmt, ap);
    return code;
}

shmlink_code set_error(shmlink_error *err, shmlink_code code, const char *op, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fill(err, code, op, NULL, 0, fmt, ap);
    va_end(ap);
    return code;
}

shmlink_code set_sys_error(shmlink_error *err, shmlink_code code, const char *op,
                           const char *syscall, int errnum, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fill(err, code, op, syscall, errnum, fmt, ap);
    va_end(ap);
    return code;
}

shmlink_code copy_error(shmlink_error *dst, const shmlink_error *src, const char *op)
{
    if (dst == NULL)
        return src->code;
    if (dst != src)
        *dst = *src;
    /* Report it for op: the message starts with the inner operation's name. */
    if (op != NULL && src->op != NULL && strcmp(op, src->op) != 0) {
        const size_t inner = strlen(src->op);
        const char *rest = dst->message;
        if (strncmp(rest, src->op, inner) == 0 && rest[inner] == ':')
            rest += inner + 1;
        char text[SHMLINK_MESSAGE_LEN];
        const int n = snprintf(text, sizeof text, "%s:%s", op, rest); /* may truncate */
        if (n >= 0)
            memcpy(dst->message, text, sizeof text);
        dst->op = op;
    }
    return src->code;
}
