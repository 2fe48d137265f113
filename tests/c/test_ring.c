/* Unit tests of src/core/ring.c. */
#include "ctest.h"
#include "ring.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static cmp_ring *
new_ring(size_t capacity, uint32_t maxsize, uint32_t flags)
{
    size_t size = cmp_ring_segment_size(capacity);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || cmp_ring_init(mem, capacity, maxsize, flags) != CMP_OK)
        return NULL;
    return mem;
}

static void
free_ring(cmp_ring *r)
{
    munmap(r, cmp_ring_segment_size(cmp_ring_capacity(r)));
}

static int
offer1(cmp_ring *r, const void *data, size_t len, int64_t deadline)
{
    struct iovec iov = {(void *)data, len};
    cmp_ring_msg m = {&iov, 1, len};
    size_t accepted, written;
    int st = cmp_ring_offer(r, &m, 1, 0, deadline, CMP_RING_WAIT_LOCK, &accepted, &written);
    if (st == CMP_OK && written == 0)
        return CMP_NEED; /* deferred: not expected in these tests */
    return st;
}

static int
write1(cmp_ring *r, const void *data, size_t len, int reserved)
{
    struct iovec iov = {(void *)data, len};
    cmp_ring_msg m = {&iov, 1, len};
    cmp_ring_wop op;
    cmp_ring_wop_init(&op, &m, reserved);
    return cmp_ring_write(r, &op);
}

/* A child process that writes one message (it blocks while nobody reads). */
static pid_t
fork_write1(cmp_ring *r, const void *data, size_t len)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(write1(r, data, len, 0) == CMP_OK ? 0 : 1);
    return pid;
}

/* Reap a child: did it exit with 0? */
static int
reaped_ok(pid_t pid)
{
    int status;
    return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* take one message into buf; its length or a negative status */
static long
take1(cmp_ring *r, void *buf, size_t cap, int64_t deadline)
{
    size_t len;
    cmp_ring_rop op;
    cmp_ring_rop_init(&op, buf, cap, &len, 1);
    int st = cmp_ring_take(r, &op, deadline);
    if (st != CMP_OK)
        return st == CMP_NEED ? -1000 - (long)op.need : st;
    return (long)len;
}

CTEST(init_rejects_bad_capacity)
{
    char mem[8192];
    CHECK(cmp_ring_init(mem, 3000, 0, 0) == CMP_ERRNO && errno == EINVAL);
    CHECK(cmp_ring_init(mem, 1024, 0, 0) == CMP_ERRNO);
    cmp_ring *r = new_ring(4096, 0, 0);
    CHECK(r != NULL);
    CHECK_EQ(cmp_ring_check(r, cmp_ring_segment_size(4096)), CMP_OK);
    CHECK_EQ(cmp_ring_check(r, 100), CMP_ERRNO);
    free_ring(r);
}

CTEST(fifo_and_wraparound)
{
    cmp_ring *r = new_ring(4096, 0, 0);
    char in[300], out[300];
    for (int i = 0; i < 2000; i++) {
        size_t len = (size_t)(i % 300);
        memset(in, i & 0xff, len);
        CHECK_EQ(offer1(r, in, len, 0), CMP_OK);
        CHECK_EQ(cmp_ring_qsize(r), 1);
        CHECK_EQ(take1(r, out, sizeof(out), 0), (long)len);
        CHECK(memcmp(in, out, len) == 0);
    }
    CHECK_EQ(take1(r, out, sizeof(out), 0), CMP_EEMPTY);
    free_ring(r);
}

CTEST(need_buffer_takes_nothing)
{
    cmp_ring *r = new_ring(4096, 0, 0);
    char in[100] = {1}, out[100];
    CHECK_EQ(offer1(r, in, 100, 0), CMP_OK);
    CHECK_EQ(take1(r, out, 10, 0), -1000 - 100);
    CHECK_EQ(cmp_ring_qsize(r), 1);
    CHECK_EQ(take1(r, out, 100, 0), 100);
    free_ring(r);
}

CTEST(bounded_slots_and_timeout)
{
    cmp_ring *r = new_ring(4096, 2, 0);
    char b = 'x', out[8];
    CHECK_EQ(offer1(r, &b, 1, 0), CMP_OK);
    CHECK_EQ(offer1(r, &b, 1, 0), CMP_OK);
    CHECK(cmp_ring_full(r));
    int64_t t0 = cmp_monotonic_ns();
    CHECK_EQ(offer1(r, &b, 1, cmp_deadline_after(0.05)), CMP_EFULL);
    CHECK(cmp_monotonic_ns() - t0 >= 50 * 1000000LL);
    CHECK_EQ(cmp_ring_reserve(r, 0), CMP_EFULL);
    CHECK_EQ(take1(r, out, sizeof(out), 0), 1);
    CHECK_EQ(cmp_ring_reserve(r, 0), CMP_OK); /* a slot for the overflow */
    CHECK(cmp_ring_full(r));
    CHECK_EQ(write1(r, &b, 1, 1), CMP_OK);
    CHECK_EQ(cmp_ring_qsize(r), 2);
    free_ring(r);
}

CTEST(joinable_counts)
{
    cmp_ring *r = new_ring(4096, 0, CMP_RING_JOINABLE);
    char b = 'x';
    CHECK_EQ(cmp_ring_task_done(r), CMP_EEMPTY);
    CHECK_EQ(offer1(r, &b, 1, 0), CMP_OK);
    CHECK_EQ(cmp_ring_unfinished(r), 1);
    CHECK_EQ(cmp_ring_join(r, cmp_deadline_after(0.02)), CMP_ETIMEDOUT);
    CHECK_EQ(cmp_ring_task_done(r), CMP_OK);
    CHECK_EQ(cmp_ring_join(r, CMP_FOREVER), CMP_OK);
    free_ring(r);
}

struct stream_arg {
    cmp_ring *r;
    size_t len;
    int count;
};

static void *
stream_producer(void *p)
{
    struct stream_arg *a = p;
    unsigned char *buf = malloc(a->len);
    for (int k = 0; k < a->count; k++) {
        for (size_t i = 0; i < a->len; i++)
            buf[i] = (unsigned char)(i * 7 + (size_t)k);
        write1(a->r, buf, a->len, 0);
    }
    free(buf);
    return NULL;
}

CTEST(messages_larger_than_the_ring_stream)
{
    cmp_ring *r = new_ring(4096, 0, 0);
    struct stream_arg a = {r, 100000, 5};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, stream_producer, &a), 0);
    unsigned char *out = malloc(a.len);
    int ok = 1;
    for (int k = 0; k < a.count; k++) {
        long n = take1(r, out, a.len, CMP_FOREVER);
        ok = ok && n == (long)a.len;
        for (size_t i = 0; ok && i < a.len; i++)
            ok = out[i] == (unsigned char)(i * 7 + (size_t)k);
    }
    pthread_join(t, NULL);
    free(out);
    CHECK(ok);
    CHECK_EQ(cmp_ring_qsize(r), 0);
    free_ring(r);
}

CTEST(dead_producer_mid_stream_is_recovered)
{
    cmp_ring *r = new_ring(4096, 0, 0);
    static char big[1 << 16];
    pid_t pid = fork_write1(r, big, sizeof(big)); /* blocks: nobody reads */
    usleep(100 * 1000);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    /* the first chunks are there; the consumer drops them and the abort */
    pthread_t t;
    struct stream_arg a = {r, 10, 1};
    CHECK_EQ(pthread_create(&t, NULL, stream_producer, &a), 0);
    unsigned char out[1 << 16];
    long n = take1(r, out, sizeof(out), CMP_FOREVER);
    pthread_join(t, NULL);
    CHECK_EQ(n, 10);
    CHECK_EQ(out[3], 21);
    free_ring(r);
}

CTEST(dead_lock_holder_is_detected)
{
    cmp_ring *r = new_ring(4096, 0, 0);
    static char big[1 << 16];
    pid_t pid = fork_write1(r, big, sizeof(big)); /* holds the put lock */
    usleep(100 * 1000);
    kill(pid, SIGKILL); /* not reaped yet: a zombie holds the lock */
    unsigned char out[1 << 16];
    /* drain its chunks so the recovering writer has room */
    take1(r, out, sizeof(out), cmp_deadline_after(0.1));
    char b = 'z';
    CHECK_EQ(write1(r, &b, 1, 0), CMP_OK);
    CHECK_EQ(take1(r, out, sizeof(out), cmp_deadline_after(5)), 1);
    CHECK_EQ(out[0], 'z');
    waitpid(pid, NULL, 0);
    free_ring(r);
}

/* ------------------------------------------------------------------------ */
/* claims (cmp.pool's worker slots)                                         */

CTEST(claim_names_the_message_taken)
{
    cmp_ring *r = new_ring(4096, 0, 0);
    _Atomic uint64_t claim[CMP_RING_CLAIM_WORDS + 1] = {0};
    uint64_t a[4] = {11, 22, 33, 44}, b[4] = {55, 66, 77, 88};
    unsigned char buf[64];
    size_t lens[2];
    CHECK_EQ(offer1(r, a, sizeof(a), CMP_FOREVER), CMP_OK);
    CHECK_EQ(offer1(r, b, sizeof(b), CMP_FOREVER), CMP_OK);
    CHECK_EQ(offer1(r, "short", 5, CMP_FOREVER), CMP_OK);
    cmp_ring_rop op;
    cmp_ring_rop_init(&op, buf, sizeof(buf), lens, 2);
    op.claim = claim;
    /* a batch claims its first message */
    CHECK_EQ(cmp_ring_take(r, &op, 0), CMP_OK);
    CHECK_EQ(op.n, 2);
    CHECK_EQ(claim[0], 11);
    CHECK_EQ(claim[1], 22);
    CHECK_EQ(claim[2], 33);
    CHECK_EQ(claim[3], 0); /* only CMP_RING_CLAIM_WORDS words */
    /* a message too short to hold a claim leaves it alone */
    claim[0] = 0;
    cmp_ring_rop_init(&op, buf, sizeof(buf), lens, 1);
    op.claim = claim;
    CHECK_EQ(cmp_ring_take(r, &op, 0), CMP_OK);
    CHECK_EQ(lens[0], 5);
    CHECK_EQ(claim[0], 0);
    free_ring(r);
}

CTEST(claim_of_a_streamed_message)
{
    cmp_ring *r = new_ring(4096, 0, 0);
    static uint64_t big[2048]; /* 16 KiB: streams through a 4 KiB ring */
    static unsigned char out[sizeof(big)];
    for (size_t i = 0; i < 2048; i++)
        big[i] = i + 100;
    _Atomic uint64_t claim[CMP_RING_CLAIM_WORDS] = {0};
    pid_t pid = fork_write1(r, big, sizeof(big));
    size_t len;
    cmp_ring_rop op;
    cmp_ring_rop_init(&op, out, sizeof(out), &len, 1);
    op.claim = claim;
    CHECK_EQ(cmp_ring_take(r, &op, cmp_deadline_after(10)), CMP_OK);
    CHECK_EQ(len, sizeof(big));
    CHECK(memcmp(out, big, sizeof(big)) == 0);
    CHECK_EQ(claim[0], 100);
    CHECK_EQ(claim[2], 102);
    CHECK(reaped_ok(pid));
    free_ring(r);
}

CTEST(stalled_stream_honours_the_deadline_and_resumes)
{
    cmp_ring *r = new_ring(4096, 0, 0);
    static unsigned char big[16384], out[sizeof(big)];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (unsigned char)(i * 7);
    pid_t pid = fork_write1(r, big, sizeof(big));
    size_t len;
    cmp_ring_rop op;
    cmp_ring_rop_init(&op, out, sizeof(out), &len, 1);
    /* wait for the first chunk, then stop the producer mid-stream */
    while (cmp_ring_empty(r))
        usleep(100);
    kill(pid, SIGSTOP);
    int64_t t0 = cmp_monotonic_ns();
    CHECK_EQ(cmp_ring_take(r, &op, cmp_deadline_after(0.05)), CMP_ETIMEDOUT);
    CHECK(op.locked);
    CHECK(cmp_monotonic_ns() - t0 < 2 * CMP_RING_PROBE_NS);
    /* never waits: returns at once, still partial */
    CHECK_EQ(cmp_ring_take(r, &op, CMP_RING_NOW), CMP_ETIMEDOUT);
    kill(pid, SIGCONT);
    CHECK_EQ(cmp_ring_take(r, &op, cmp_deadline_after(10)), CMP_OK);
    CHECK_EQ(len, sizeof(big));
    CHECK(memcmp(out, big, sizeof(big)) == 0);
    CHECK(reaped_ok(pid));
    free_ring(r);
}

int
main(void)
{
    return ctest_main();
}
