/* Unit tests of src/core/futex.c, shm.c and sync.c. */
#include "ctest.h"
#include "futex.h"
#include "shm.h"
#include "sync.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void
sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int
wait_child(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ------------------------------------------------------------------------ */
/* futex                                                                    */

CTEST(futex_wait_times_out_never_early)
{
    _Atomic uint32_t word = 0;
    int64_t start = cmp_monotonic_ns();
    int64_t deadline = cmp_deadline_after(0.05);
    CHECK_EQ(cmp_futex_wait(&word, 0, CMP_FUTEX_ANY, deadline), CMP_ETIMEDOUT);
    int64_t now = cmp_monotonic_ns();
    CHECK(now >= deadline);
    CHECK(now - start < 1000000000LL);
    /* A word that already changed returns at once. */
    CHECK_EQ(cmp_futex_wait(&word, 1, CMP_FUTEX_ANY, CMP_FOREVER), CMP_OK);
    /* A past deadline is a poll. */
    CHECK_EQ(cmp_futex_wait(&word, 0, CMP_FUTEX_ANY, 0), CMP_ETIMEDOUT);
    CHECK_EQ(cmp_futex_wake(&word, 1, CMP_FUTEX_ANY), 0);
}

/* ------------------------------------------------------------------------ */
/* shm arena                                                                */

CTEST(arena_reuses_freed_blocks_and_zeroes_them)
{
    cmp_shm_block a, b, c;
    CHECK_EQ(cmp_shm_alloc(16, 8, &a), CMP_OK);
    CHECK_EQ(cmp_shm_alloc(100, 8, &b), CMP_OK);
    CHECK(a.addr != b.addr);
    CHECK_EQ(b.size, 128);
    CHECK_EQ((uintptr_t)a.addr % CMP_SHM_BLOCK, 0);
    memset(a.addr, 0xab, 16);
    void *old = a.addr;
    cmp_shm_free(&a);
    CHECK(a.addr == NULL);
    CHECK_EQ(cmp_shm_alloc(8, 8, &c), CMP_OK);
    CHECK(c.addr == old);
    CHECK_EQ(((unsigned char *)c.addr)[0], 0);
    cmp_shm_free(&b);
    cmp_shm_free(&c);
}

CTEST(arena_many_blocks_share_segments_and_release_them)
{
    enum { N = 5000 };
    static cmp_shm_block blocks[N];
    cmp_shm_stats before, during, after;
    cmp_shm_get_stats(&before);
    for (int i = 0; i < N; i++)
        CHECK_EQ(cmp_shm_alloc(8, 8, &blocks[i]), CMP_OK);
    cmp_shm_get_stats(&during);
    CHECK_EQ(during.blocks_used - before.blocks_used, N);
    CHECK(during.segments - before.segments <= N / (CMP_SHM_SEGMENT / CMP_SHM_BLOCK) + 1);
    for (int i = 0; i < N; i++)
        cmp_shm_free(&blocks[i]);
    cmp_shm_get_stats(&after);
    CHECK_EQ(after.blocks_used, before.blocks_used);
    CHECK(after.segments <= before.segments + 1);
}

CTEST(arena_large_block_has_its_own_segment)
{
    cmp_shm_stats before, after;
    cmp_shm_get_stats(&before);
    cmp_shm_block big;
    CHECK_EQ(cmp_shm_alloc(1 << 20, 8, &big), CMP_OK);
    CHECK_EQ(big.size, 1 << 20);
    memset(big.addr, 1, 1 << 20);
    cmp_shm_free(&big);
    cmp_shm_get_stats(&after);
    CHECK_EQ(after.segments, before.segments);
    CHECK_EQ(after.bytes, before.bytes);
}

CTEST(arena_large_block_shared_is_unmapped_at_free)
{
    /* Its own segment: the children keep their mappings, ours goes. */
    cmp_shm_stats before, after;
    cmp_shm_get_stats(&before);
    cmp_shm_block big;
    CHECK_EQ(cmp_shm_alloc(1 << 20, 8, &big), CMP_OK);
    int fd = cmp_shm_share(&big);
    *(volatile int *)big.addr = 5;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        usleep(100 * 1000); /* the parent frees its mapping meanwhile */
        _exit(*(volatile int *)big.addr == 7 ? 0 : 1);
    }
    *(volatile int *)big.addr = 7;
    cmp_shm_free(&big);
    CHECK(fcntl(fd, F_GETFD) < 0);
    cmp_shm_get_stats(&after);
    CHECK_EQ(after.segments, before.segments);
    CHECK_EQ(wait_child(pid), 0);
}

CTEST(arena_block_alive_at_fork_is_not_reused)
{
    cmp_shm_block a, b;
    CHECK_EQ(cmp_shm_alloc(8, 8, &a), CMP_OK);
    void *old = a.addr;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(cmp_self_pid() == getpid() ? 0 : 1);
    CHECK_EQ(wait_child(pid), 0);
    cmp_shm_free(&a);
    CHECK_EQ(cmp_shm_alloc(8, 8, &b), CMP_OK);
    CHECK(b.addr != old);
    cmp_shm_free(&b);
}

CTEST(arena_attach_maps_by_descriptor_once)
{
    cmp_shm_block a, view1, view2;
    CHECK_EQ(cmp_shm_alloc(64, 8, &a), CMP_OK);
    int fd = cmp_shm_share(&a);
    *(int *)a.addr = 42;
    /* The same segment through another descriptor: the cached mapping, the
     * duplicate descriptor closed. */
    int dup1 = dup(fd);
    CHECK(dup1 >= 0);
    CHECK_EQ(cmp_shm_attach(dup1, a.off, 64, &view1), CMP_OK);
    CHECK(view1.addr == a.addr);
    CHECK(fcntl(dup1, F_GETFD) < 0);
    int dup2 = dup(fd);
    CHECK_EQ(cmp_shm_attach(dup2, CMP_SHM_SEGMENT, 64, &view2), CMP_ERRNO);
    CHECK_EQ(errno, EINVAL);
    cmp_shm_free(&view1);
    cmp_shm_free(&a);
    CHECK(fcntl(fd, F_GETFD) >= 0); /* shared: the segment stays */
}

/* ------------------------------------------------------------------------ */
/* semaphore                                                                */

CTEST(sem_try_post_bounds)
{
    cmp_sem s;
    cmp_sem_init(&s, 1);
    CHECK_EQ(cmp_sem_post(&s, 1), CMP_EOVERFLOW);
    CHECK_EQ(cmp_sem_trywait(&s), CMP_OK);
    CHECK_EQ(cmp_sem_trywait(&s), CMP_EEMPTY);
    CHECK_EQ(cmp_sem_wait(&s, cmp_deadline_after(0.02)), CMP_ETIMEDOUT);
    CHECK_EQ(cmp_sem_post(&s, 1), CMP_OK);
    CHECK_EQ(cmp_sem_value(&s), 1);
    CHECK_EQ(cmp_sem_post(&s, CMP_SEM_VALUE_MAX), CMP_OK);
    CHECK_EQ(cmp_sem_value(&s), 2);
}

CTEST(sem_mutual_exclusion_across_processes)
{
    enum { NPROC = 4, M = 20000 };
    cmp_shm_block blk;
    CHECK_EQ(cmp_shm_alloc(2 * sizeof(long) + sizeof(cmp_sem), 8, &blk), CMP_OK);
    cmp_sem *s = blk.addr;
    volatile long *counter = (volatile long *)blk.addr + 2; /* past the 12-byte sem */
    cmp_sem_init(s, 1);
    pid_t pids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        pids[i] = fork();
        CHECK(pids[i] >= 0);
        if (pids[i] == 0) {
            for (int k = 0; k < M; k++) {
                if (cmp_sem_trywait(s) != CMP_OK) {
                    int st;
                    while ((st = cmp_sem_wait(s, CMP_FOREVER)) == CMP_EINTR)
                        ;
                    if (st != CMP_OK)
                        _exit(2);
                }
                long v = *counter;
                *counter = v + 1;
                if (cmp_sem_post(s, 1) != CMP_OK)
                    _exit(3);
            }
            _exit(0);
        }
    }
    for (int i = 0; i < NPROC; i++)
        CHECK_EQ(wait_child(pids[i]), 0);
    CHECK_EQ(*counter, NPROC * M);
    CHECK_EQ(cmp_sem_value(s), 1);
    CHECK_EQ(atomic_load(&s->sleepers), 0);
}

/* ------------------------------------------------------------------------ */
/* event                                                                    */

CTEST(event_wakes_waiters_in_other_processes)
{
    cmp_shm_block blk;
    CHECK_EQ(cmp_shm_alloc(sizeof(cmp_event), 8, &blk), CMP_OK);
    cmp_event *e = blk.addr;
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        pids[i] = fork();
        CHECK(pids[i] >= 0);
        if (pids[i] == 0) {
            uint32_t seen = cmp_event_snapshot(e);
            int st = (seen & 1) ? CMP_OK : cmp_event_wait(e, seen, cmp_deadline_after(10));
            _exit(st == CMP_OK && cmp_event_is_set(e) ? 0 : 1);
        }
    }
    sleep_ms(50);
    CHECK_EQ(cmp_event_set(e), CMP_OK);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(wait_child(pids[i]), 0);
}

CTEST(event_set_then_clear_still_ends_a_wait)
{
    cmp_event e = {0};
    uint32_t seen = cmp_event_snapshot(&e);
    CHECK_EQ(cmp_event_set(&e), CMP_OK);
    cmp_event_clear(&e);
    CHECK_EQ(cmp_event_is_set(&e), 0);
    CHECK_EQ(cmp_event_wait(&e, seen, cmp_deadline_after(0.01)), CMP_OK);
    CHECK_EQ(cmp_event_wait(&e, cmp_event_snapshot(&e), cmp_deadline_after(0.01)), CMP_ETIMEDOUT);
}

/* ------------------------------------------------------------------------ */
/* condition                                                                */

struct cond_shared {
    cmp_sem lock;
    cmp_cond cond;
    int woken;
};

static void
lock(cmp_sem *s)
{
    while (cmp_sem_trywait(s) != CMP_OK && cmp_sem_wait(s, CMP_FOREVER) != CMP_OK)
        ;
}

static int
cond_waiter(struct cond_shared *sh, double timeout)
{
    lock(&sh->lock);
    cmp_cond_ticket t = cmp_cond_enter(&sh->cond);
    cmp_sem_post(&sh->lock, 1);
    int st = cmp_cond_sleep(&sh->cond, t, cmp_deadline_after(timeout));
    lock(&sh->lock);
    int notified = st == CMP_OK || cmp_cond_leave(&sh->cond, t);
    if (notified)
        sh->woken++;
    cmp_sem_post(&sh->lock, 1);
    return notified;
}

static uint32_t
waiting(struct cond_shared *sh)
{
    lock(&sh->lock);
    uint32_t n = cmp_cond_waiting(&sh->cond);
    cmp_sem_post(&sh->lock, 1);
    return n;
}

static int
woken(struct cond_shared *sh)
{
    lock(&sh->lock);
    int n = sh->woken;
    cmp_sem_post(&sh->lock, 1);
    return n;
}

static void
notify(struct cond_shared *sh, uint32_t n)
{
    lock(&sh->lock);
    cmp_cond_notify(&sh->cond, n);
    cmp_sem_post(&sh->lock, 1);
}

CTEST(cond_notify_one_wakes_exactly_one_process)
{
    cmp_shm_block blk;
    CHECK_EQ(cmp_shm_alloc(sizeof(struct cond_shared), 8, &blk), CMP_OK);
    struct cond_shared *sh = blk.addr;
    cmp_sem_init(&sh->lock, 1);
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        pids[i] = fork();
        CHECK(pids[i] >= 0);
        if (pids[i] == 0)
            _exit(cond_waiter(sh, 20) ? 0 : 1);
    }
    while (waiting(sh) < 3)
        sleep_ms(1);
    notify(sh, 1);
    for (int i = 0; i < 2000 && woken(sh) < 1; i++)
        sleep_ms(1);
    sleep_ms(100);
    CHECK_EQ(woken(sh), 1);
    CHECK_EQ(waiting(sh), 2);
    notify(sh, UINT32_MAX);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(wait_child(pids[i]), 0);
    CHECK_EQ(sh->woken, 3);
    CHECK_EQ(waiting(sh), 0);
}

CTEST(cond_timed_out_waiter_does_not_swallow_a_notify)
{
    cmp_shm_block blk;
    CHECK_EQ(cmp_shm_alloc(sizeof(struct cond_shared), 8, &blk), CMP_OK);
    struct cond_shared *sh = blk.addr;
    cmp_sem_init(&sh->lock, 1);
    pid_t first = fork();
    CHECK(first >= 0);
    if (first == 0) /* the first ticket; gives up soon */
        _exit(cond_waiter(sh, 0.05) ? 1 : 0);
    while (waiting(sh) < 1)
        sleep_ms(1);
    pid_t second = fork();
    CHECK(second >= 0);
    if (second == 0)
        _exit(cond_waiter(sh, 20) ? 0 : 1);
    CHECK_EQ(wait_child(first), 0);
    while (waiting(sh) < 1)
        sleep_ms(1);
    notify(sh, 1); /* must reach the second waiter */
    CHECK_EQ(wait_child(second), 0);
    CHECK_EQ(sh->woken, 1);
    CHECK_EQ(waiting(sh), 0);
}

CTEST(cond_notify_without_waiters_is_free)
{
    cmp_cond c = {0};
    CHECK_EQ(cmp_cond_notify(&c, 1), 0);
    CHECK_EQ(cmp_cond_waiting(&c), 0);
    cmp_cond_ticket t = cmp_cond_enter(&c);
    CHECK_EQ(cmp_cond_sleep(&c, t, cmp_deadline_after(0.01)), CMP_ETIMEDOUT);
    CHECK_EQ(cmp_cond_leave(&c, t), 0);
    CHECK_EQ(cmp_cond_waiting(&c), 0);
    CHECK_EQ(cmp_cond_notify(&c, 1), 0);
}

int
main(void)
{
    return ctest_main();
}
