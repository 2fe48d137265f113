/* Futex wait/wake on 32-bit words in (shared) memory.
 *
 * Waits take absolute CLOCK_MONOTONIC deadlines (CMP_FOREVER for none), so
 * retrying after a signal never stretches a timeout. Words are shared
 * futexes: they work between processes mapping the same memory. */
#ifndef CMP_FUTEX_H
#define CMP_FUTEX_H

#include "cmp_core.h"

#include <stdatomic.h>
#include <stdint.h>

/* Any waiter: the bitset of a plain wait or wake. */
#define CMP_FUTEX_ANY 0xffffffffu

/* Sleep while *word == expected, until woken by a wake whose bitset
 * intersects `bitset`, or the deadline. Returns CMP_OK (woken, or the word
 * no longer held `expected`: the caller re-checks its condition either way),
 * CMP_ETIMEDOUT, CMP_EINTR (a signal arrived) or CMP_ERRNO. */
int cmp_futex_wait(_Atomic uint32_t *word, uint32_t expected, uint32_t bitset, int64_t deadline);

/* Wake up to n waiters on word whose bitset intersects `bitset`.
 * Returns the number woken, or CMP_ERRNO. */
int cmp_futex_wake(_Atomic uint32_t *word, int n, uint32_t bitset);

/* A short busy-wait step for spin-then-sleep loops. */
static inline void
cmp_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

#endif /* CMP_FUTEX_H */
