/* Futex wait/wake with absolute CLOCK_MONOTONIC deadlines. */
#include "futex.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int
cmp_futex_wait(_Atomic uint32_t *word, uint32_t expected, uint32_t bitset, int64_t deadline)
{
    struct timespec ts, *tsp = NULL;
    if (deadline != CMP_FOREVER) {
        if (deadline < 0)
            deadline = 0;
        ts.tv_sec = (time_t)(deadline / 1000000000LL);
        ts.tv_nsec = (long)(deadline % 1000000000LL);
        tsp = &ts;
    }
    /* FUTEX_WAIT_BITSET takes an absolute timeout, on CLOCK_MONOTONIC unless
     * FUTEX_CLOCK_REALTIME is given. Not FUTEX_PRIVATE_FLAG: the word may be
     * shared with other processes. */
    long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, tsp, NULL, bitset);
    if (r == 0)
        return CMP_OK;
    switch (errno) {
    case EAGAIN: /* the word had already changed */ return CMP_OK;
    case ETIMEDOUT: return CMP_ETIMEDOUT;
    case EINTR: return CMP_EINTR;
    default: return CMP_ERRNO;
    }
}

int
cmp_futex_wake(_Atomic uint32_t *word, int n, uint32_t bitset)
{
    long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_BITSET, n, NULL, NULL, bitset);
    if (r < 0)
        return CMP_ERRNO;
    return r > INT_MAX ? INT_MAX : (int)r;
}
