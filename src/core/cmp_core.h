/* cmp core: shared definitions. Plain C11 + POSIX; never includes Python.h.
 *
 * Every core function returns a cmp_status (or a value that cannot be
 * negative, with a negative cmp_status on failure). CMP_ERRNO means "see
 * errno", which the function leaves as the failing call set it. The binding
 * turns a status into an exception in exactly one place, cmp_set_error().
 */
#ifndef CMP_CORE_H
#define CMP_CORE_H

#include <stdint.h>

typedef enum {
    CMP_NEED = 1, /* not an error: a larger buffer is needed (ring take) */
    CMP_OK = 0,
    CMP_ERRNO = -1,      /* errno holds the cause */
    CMP_ETIMEDOUT = -2,  /* the deadline passed */
    CMP_EINTR = -3,      /* a signal arrived: let the caller run handlers, then retry */
    CMP_EFULL = -4,      /* no room (non-blocking) */
    CMP_EEMPTY = -5,     /* nothing there (non-blocking) */
    CMP_ECLOSED = -6,    /* the object was closed */
    CMP_EEOF = -7,       /* the peer went away */
    CMP_EBADMSG = -8,    /* malformed or oversized message */
    CMP_ENOTOWNER = -9,  /* released by a thread that does not own it */
    CMP_EOVERFLOW = -10, /* a counter would pass its bound */
    CMP_EBROKEN = -11,   /* a barrier was broken or reset */
    CMP_EREPORTED = -12, /* the caller's own error, already reported (the
                            binding: a Python exception is set) */
} cmp_status;

/* Deadlines are absolute CLOCK_MONOTONIC times in nanoseconds. */
#define CMP_FOREVER INT64_MAX

int64_t cmp_monotonic_ns(void);

/* A deadline `timeout` seconds from now; negative or NaN means "now",
 * +inf or larger than the clock can hold means CMP_FOREVER. */
int64_t cmp_deadline_after(double timeout);

/* Milliseconds left until `deadline` for poll(): -1 for CMP_FOREVER, 0 once
 * it has passed, rounded up so a wait never ends early. */
int cmp_poll_ms_left(int64_t deadline);

#if defined(CMP_DEBUG)
#include <assert.h>
#define CMP_ASSERT(x) assert(x)
#else
#define CMP_ASSERT(x) ((void)0)
#endif

#define CMP_LIKELY(x) __builtin_expect(!!(x), 1)
#define CMP_UNLIKELY(x) __builtin_expect(!!(x), 0)

#endif /* CMP_CORE_H */
