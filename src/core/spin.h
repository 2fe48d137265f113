/* Adaptive busy-waiting before a sleep, shared by every wait that can end
 * soon: futex waits (sync.c), Pipe() channels (chan.c) and socket receives
 * (wire.c).
 *
 * A waiter first spins, bounded by its deadline and by a budget kept per
 * object: a lock held for a short critical section, or a peer about to
 * answer, is caught without a sleep, a wake-up and their context switches.
 * The budget doubles (up to max_ns, about what a sleep and a wake-up cost, so
 * a waiter never spends much more than twice the time it would have anyway)
 * when spinning paid off. After a wait that spun in vain and slept, it goes
 * back to max_ns if the whole wait was no longer than that (spinning would
 * have caught it), and halves (down to min_ns) if it was longer -- as on a
 * machine with more runnable processes than CPUs, where spinning only delays
 * the process that would end the wait. */
#ifndef CMP_SPIN_H
#define CMP_SPIN_H

#include "cmp_core.h"

#include <stdatomic.h>
#include <stdint.h>

typedef struct {
    uint32_t max_ns;
    uint32_t min_ns;
    /* Pauses between two looks, doubling from one up to this: a lock waiter
     * that backs off leaves the holder's cache line alone, so a holder that
     * takes the lock again and again keeps its uncontended speed. Waits for
     * a peer that answers once keep 1. */
    unsigned max_pause;
} cmp_spin_policy;

/* A budget in nanoseconds; 0 (zeroed memory) means max_ns. It may live in
 * shared memory: a lock's waiters in all processes share one. */
typedef _Atomic uint32_t cmp_spin_budget;

/* Spin until ready(arg) or the budget (or the deadline) is spent: 1 if
 * ready. *start is when a vain spin began, for cmp_spin_settle(); 0 when
 * there is nothing to settle (ready at once, or the deadline had passed). */
int cmp_spin(const cmp_spin_policy *p, cmp_spin_budget *budget, int (*ready)(void *), void *arg,
             int64_t deadline, int64_t *start);

/* After the wait that followed a vain spin has succeeded. */
void cmp_spin_settle(const cmp_spin_policy *p, cmp_spin_budget *budget, int64_t start);

#endif /* CMP_SPIN_H */
