/* Monotonic time and deadlines. */
#include "cmp_core.h"

#include <limits.h>
#include <math.h>
#include <time.h>

int64_t
cmp_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t
cmp_deadline_after(double timeout)
{
    int64_t now = cmp_monotonic_ns();
    if (!(timeout > 0.0)) /* negative, zero or NaN */
        return now;
    if (timeout >= (double)(CMP_FOREVER - now) / 1e9)
        return CMP_FOREVER;
    return now + (int64_t)ceil(timeout * 1e9);
}

int
cmp_poll_ms_left(int64_t deadline)
{
    if (deadline == CMP_FOREVER)
        return -1;
    int64_t left = deadline - cmp_monotonic_ns();
    if (left <= 0)
        return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}
