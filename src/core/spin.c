/* Adaptive busy-waiting before a sleep (see spin.h). */
#include "spin.h"
#include "futex.h"

static uint32_t
current(const cmp_spin_policy *p, cmp_spin_budget *budget)
{
    uint32_t ns = atomic_load_explicit(budget, memory_order_relaxed);
    return ns == 0 || ns > p->max_ns ? p->max_ns : ns;
}

int
cmp_spin(const cmp_spin_policy *p, cmp_spin_budget *budget, int (*ready)(void *), void *arg,
         int64_t deadline, int64_t *start)
{
    *start = 0;
    if (ready(arg))
        return 1;
    uint32_t ns = current(p, budget);
    int64_t now = cmp_monotonic_ns();
    if (deadline <= now)
        return 0;
    *start = now;
    int64_t end = deadline - now > ns ? now + ns : deadline;
    unsigned pause = 1, since_clock = 0;
    for (;;) {
        for (unsigned i = 0; i < pause; i++)
            cmp_cpu_relax();
        if (ready(arg)) {
            if (ns < p->max_ns)
                atomic_store_explicit(budget, ns * 2, memory_order_relaxed);
            *start = 0;
            return 1;
        }
        since_clock += pause;
        if (pause < p->max_pause)
            pause <<= 1;
        if (since_clock >= 16) { /* read the clock every ~0.5 us */
            since_clock = 0;
            if (cmp_monotonic_ns() >= end)
                return 0;
        }
    }
}

void
cmp_spin_settle(const cmp_spin_policy *p, cmp_spin_budget *budget, int64_t start)
{
    if (start == 0)
        return;
    uint32_t ns = current(p, budget);
    if (cmp_monotonic_ns() - start <= p->max_ns)
        atomic_store_explicit(budget, p->max_ns, memory_order_relaxed);
    else if (ns > p->min_ns)
        atomic_store_explicit(budget, ns / 2, memory_order_relaxed);
}
