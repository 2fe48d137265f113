/* Process-shared synchronization on futex words (see sync.h). */
#include "sync.h"

#include <limits.h>

/* Waiters spin before they sleep (spin.h). CMP_SPIN_MAX_NS is about what a
 * futex sleep and wake-up cost; a lock waiter backs off up to 64 PAUSEs
 * (~2 us on AMD Zen, where one costs 28 ns). */
#ifndef CMP_SPIN_MAX_NS
#define CMP_SPIN_MAX_NS 20000
#endif
static const cmp_spin_policy lock_spin = {CMP_SPIN_MAX_NS, 1000, 64};
static const cmp_spin_policy peer_spin = {CMP_SPIN_MAX_NS, 1000, 1};

/* ------------------------------------------------------------------------ */
/* Semaphore                                                                */

void
cmp_sem_init(cmp_sem *s, uint32_t value)
{
    atomic_store(&s->value, value);
    atomic_store(&s->sleepers, 0);
    atomic_store(&s->spin_ns, 0);
}

int
cmp_sem_wake(cmp_sem *s)
{
    return cmp_futex_wake(&s->value, 1, CMP_FUTEX_ANY) < 0 ? CMP_ERRNO : CMP_OK;
}

/* Takes the unit when there is one. */
static int
sem_ready(void *p)
{
    cmp_sem *s = p;
    return atomic_load_explicit(&s->value, memory_order_relaxed) > 0
           && cmp_sem_trywait(s) == CMP_OK;
}

/* Spin, then sleep; woken, spin again before sleeping again. A waiter counts
 * in `sleepers` only around the futex call, so while it spins the holder's
 * release() stays free of system calls. */
int
cmp_sem_wait(cmp_sem *s, int64_t deadline)
{
    int64_t first = 0, start;
    for (;;) {
        if (cmp_spin(&lock_spin, &s->spin_ns, sem_ready, s, deadline, &start)) {
            cmp_spin_settle(&lock_spin, &s->spin_ns, first); /* no-op if it never slept */
            return CMP_OK;
        }
        if (first == 0)
            first = start;
        atomic_fetch_add(&s->sleepers, 1);
        /* Re-check once counted: a release() that missed the count posted
         * before it, and we see its unit here. */
        int taken = cmp_sem_trywait(s) == CMP_OK;
        int st = taken ? CMP_OK : cmp_futex_wait(&s->value, 0, CMP_FUTEX_ANY, deadline);
        atomic_fetch_sub(&s->sleepers, 1);
        if (taken) {
            cmp_spin_settle(&lock_spin, &s->spin_ns, first);
            return CMP_OK;
        }
        if (st == CMP_OK)
            continue; /* woken, or the value changed: try again */
        /* A unit posted as the deadline passed still counts. */
        if (st == CMP_ETIMEDOUT && cmp_sem_trywait(s) == CMP_OK)
            return CMP_OK;
        return st;
    }
}

/* ------------------------------------------------------------------------ */
/* Event                                                                    */

int
cmp_event_set(cmp_event *e)
{
    uint32_t w = atomic_load_explicit(&e->word, memory_order_relaxed);
    do {
        if (w & 1)
            return CMP_OK;
    } while (!atomic_compare_exchange_weak_explicit(&e->word, &w, (w + 2) | 1, memory_order_seq_cst,
                                                    memory_order_relaxed));
    if (atomic_load_explicit(&e->sleepers, memory_order_seq_cst) > 0
        && cmp_futex_wake(&e->word, INT_MAX, CMP_FUTEX_ANY) < 0)
        return CMP_ERRNO;
    return CMP_OK;
}

void
cmp_event_clear(cmp_event *e)
{
    atomic_fetch_and(&e->word, ~1u);
}

struct event_spin {
    cmp_event *e;
    uint32_t seen;
};

static int
event_changed(void *p)
{
    struct event_spin *es = p;
    return atomic_load_explicit(&es->e->word, memory_order_acquire) != es->seen;
}

int
cmp_event_wait(cmp_event *e, uint32_t seen, int64_t deadline)
{
    struct event_spin es = {e, seen};
    int64_t start;
    if (cmp_spin(&peer_spin, &e->spin_ns, event_changed, &es, deadline, &start))
        return CMP_OK;
    atomic_fetch_add(&e->sleepers, 1);
    int st;
    while ((st = cmp_futex_wait(&e->word, seen, CMP_FUTEX_ANY, deadline)) == CMP_OK) {
        if (atomic_load(&e->word) != seen)
            break;
    }
    atomic_fetch_sub(&e->sleepers, 1);
    if (st == CMP_OK)
        cmp_spin_settle(&peer_spin, &e->spin_ns, start);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Condition variable                                                       */

static int
cancelled(const cmp_cond *c, uint32_t ticket)
{
    uint32_t i = ticket % CMP_COND_WINDOW;
    return (c->cancelled[i / 32] >> (i % 32)) & 1;
}

static void
set_cancelled(cmp_cond *c, uint32_t ticket, int on)
{
    uint32_t i = ticket % CMP_COND_WINDOW;
    if (on)
        c->cancelled[i / 32] |= 1u << (i % 32);
    else
        c->cancelled[i / 32] &= ~(1u << (i % 32));
}

static int
notified(cmp_cond *c, cmp_cond_ticket t)
{
    uint32_t h = atomic_load_explicit(&c->head, memory_order_acquire);
    return t.tracked ? (int32_t)(h - t.ticket) > 0 : h != t.ticket;
}

struct cond_spin {
    cmp_cond *c;
    cmp_cond_ticket t;
};

static int
cond_notified(void *p)
{
    struct cond_spin *cs = p;
    return notified(cs->c, cs->t);
}

cmp_cond_ticket
cmp_cond_enter(cmp_cond *c)
{
    uint32_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    if (c->tail - h >= CMP_COND_WINDOW)
        return (cmp_cond_ticket){h, 0};
    return (cmp_cond_ticket){c->tail++, 1};
}

int
cmp_cond_sleep(cmp_cond *c, cmp_cond_ticket t, int64_t deadline)
{
    struct cond_spin cs = {c, t};
    int64_t start;
    if (cmp_spin(&peer_spin, &c->spin_ns, cond_notified, &cs, deadline, &start))
        return CMP_OK;
    uint32_t bits = t.tracked ? 1u << (t.ticket % 32) : CMP_FUTEX_ANY;
    atomic_fetch_add(&c->sleepers, 1);
    int st;
    for (;;) {
        uint32_t h = atomic_load(&c->head);
        if (t.tracked ? (int32_t)(h - t.ticket) > 0 : h != t.ticket) {
            st = CMP_OK;
            break;
        }
        st = cmp_futex_wait(&c->head, h, bits, deadline);
        if (st != CMP_OK)
            break;
    }
    atomic_fetch_sub(&c->sleepers, 1);
    if (st == CMP_OK)
        cmp_spin_settle(&peer_spin, &c->spin_ns, start);
    return st;
}

int
cmp_cond_leave(cmp_cond *c, cmp_cond_ticket t)
{
    if (notified(c, t))
        return 1;
    if (t.tracked) {
        if (t.ticket == c->tail - 1)
            c->tail--;
        else
            set_cancelled(c, t.ticket, 1);
    }
    return 0;
}

int
cmp_cond_notify(cmp_cond *c, uint32_t n)
{
    uint32_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    uint32_t mask = 0;
    int woken = 0;
    while (n > 0 && h != c->tail) {
        if (cancelled(c, h)) {
            set_cancelled(c, h, 0);
        }
        else {
            mask |= 1u << (h % 32);
            n--;
            woken++;
        }
        h++;
    }
    if (woken == 0) {
        atomic_store(&c->head, h);
        return 0;
    }
    atomic_store(&c->head, h);
    if (atomic_load(&c->sleepers) > 0 && cmp_futex_wake(&c->head, INT_MAX, mask) < 0)
        return CMP_ERRNO;
    return woken;
}

uint32_t
cmp_cond_waiting(cmp_cond *c)
{
    uint32_t h = atomic_load_explicit(&c->head, memory_order_relaxed);
    uint32_t n = c->tail - h;
    for (uint32_t i = 0; i < CMP_COND_WINDOW / 32; i++)
        n -= (uint32_t)__builtin_popcount(c->cancelled[i]);
    return n;
}
