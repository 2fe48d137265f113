/* Process-shared synchronization on futex words.
 *
 * Every object is a small struct of 32-bit words meant to live in shared
 * memory (see shm.h); zero-filled memory plus the init function below makes
 * a valid object. Fast paths are inline single atomic operations; blocking
 * waits spin briefly (adaptively, up to about a futex round trip), then
 * sleep on a futex until an absolute
 * CLOCK_MONOTONIC deadline, and return CMP_EINTR when a signal arrives so the
 * caller can run handlers and call again (PEP 475).
 *
 * No object records which process holds it: a process killed while holding
 * a lock leaves it held (as the stdlib's POSIX semaphores do), and one killed
 * while waiting leaves only a stale sleeper count, which costs the others a
 * spare wake-up call, never a lost or duplicated acquisition. */
#ifndef CMP_SYNC_H
#define CMP_SYNC_H

#include "cmp_core.h"
#include "futex.h"
#include "spin.h"

#include <stdatomic.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Semaphore: Lock (maxvalue 1), RLock, Semaphore, BoundedSemaphore         */

#define CMP_SEM_VALUE_MAX 0x7fffffffu

typedef struct {
    _Atomic uint32_t value;
    _Atomic uint32_t sleepers; /* waiters inside futex_wait (or about to be) */
    cmp_spin_budget spin_ns;   /* see spin.h */
} cmp_sem;

void cmp_sem_init(cmp_sem *s, uint32_t value);

/* Take one unit if there is one: CMP_OK or CMP_EEMPTY. One CAS. */
static inline int
cmp_sem_trywait(cmp_sem *s)
{
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    while (v > 0) {
        if (atomic_compare_exchange_weak_explicit(&s->value, &v, v - 1, memory_order_seq_cst,
                                                  memory_order_relaxed))
            return CMP_OK;
    }
    return CMP_EEMPTY;
}

/* Block until a unit is taken or the deadline passes:
 * CMP_OK, CMP_ETIMEDOUT, CMP_EINTR or CMP_ERRNO. */
int cmp_sem_wait(cmp_sem *s, int64_t deadline);

int cmp_sem_wake(cmp_sem *s);

/* Give one unit back; CMP_EOVERFLOW if the value is already `maxvalue`
 * (a Lock released while unlocked). One CAS, plus a futex wake only when
 * someone sleeps. */
static inline int
cmp_sem_post(cmp_sem *s, uint32_t maxvalue)
{
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    do {
        if (v >= maxvalue)
            return CMP_EOVERFLOW;
    } while (!atomic_compare_exchange_weak_explicit(&s->value, &v, v + 1, memory_order_seq_cst,
                                                    memory_order_relaxed));
    if (CMP_UNLIKELY(atomic_load_explicit(&s->sleepers, memory_order_seq_cst) > 0))
        return cmp_sem_wake(s);
    return CMP_OK;
}

static inline uint32_t
cmp_sem_value(cmp_sem *s)
{
    return atomic_load_explicit(&s->value, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* Event: bit 0 of `word` is the flag, the bits above count set() calls     */

typedef struct {
    _Atomic uint32_t word;
    _Atomic uint32_t sleepers;
    cmp_spin_budget spin_ns;
} cmp_event;

static inline int
cmp_event_is_set(cmp_event *e)
{
    return atomic_load_explicit(&e->word, memory_order_acquire) & 1;
}

static inline uint32_t
cmp_event_snapshot(cmp_event *e)
{
    return atomic_load_explicit(&e->word, memory_order_acquire);
}

int cmp_event_set(cmp_event *e);
void cmp_event_clear(cmp_event *e);

/* Wait until the event word differs from `seen` (a snapshot taken when the
 * wait began, so a set() then clear() in between is not missed): CMP_OK,
 * CMP_ETIMEDOUT, CMP_EINTR or CMP_ERRNO. The caller then reads the flag. */
int cmp_event_wait(cmp_event *e, uint32_t seen, int64_t deadline);

/* ------------------------------------------------------------------------ */
/* Condition variable, used with a lock the caller holds                    */

/* Waiters take tickets in order; notify(n) moves `head` past the next n
 * live tickets and wakes exactly those sleepers (futex bitsets select them:
 * a waiter sleeps on bit ticket % 32, so notify(1) wakes one process, not a
 * herd). A waiter that times out cancels its ticket so no notify is lost on
 * it. At most CMP_COND_WINDOW waiters hold tickets; more waiters than that
 * wait untracked and wake at the next notify of any kind (a spurious
 * wake-up, which wait_for() absorbs). */
#define CMP_COND_WINDOW 256

typedef struct {
    _Atomic uint32_t head; /* tickets before head have been notified */
    _Atomic uint32_t sleepers;
    cmp_spin_budget spin_ns;
    uint32_t tail;                            /* next ticket; guarded by the caller's lock */
    uint32_t cancelled[CMP_COND_WINDOW / 32]; /* guarded by the lock */
} cmp_cond;

typedef struct {
    uint32_t ticket;
    int tracked;
} cmp_cond_ticket;

/* With the lock held, before releasing it to wait. */
cmp_cond_ticket cmp_cond_enter(cmp_cond *c);

/* Without the lock: sleep until notified: CMP_OK, CMP_ETIMEDOUT, CMP_EINTR
 * or CMP_ERRNO. */
int cmp_cond_sleep(cmp_cond *c, cmp_cond_ticket t, int64_t deadline);

/* With the lock held again after cmp_cond_sleep() failed: 1 if the waiter
 * was notified after all, else 0 (its ticket is cancelled). */
int cmp_cond_leave(cmp_cond *c, cmp_cond_ticket t);

/* With the lock held: wake up to n waiters. The number notified, or
 * CMP_ERRNO. */
int cmp_cond_notify(cmp_cond *c, uint32_t n);

/* With the lock held: waiters holding tickets. */
uint32_t cmp_cond_waiting(cmp_cond *c);

#endif /* CMP_SYNC_H */
