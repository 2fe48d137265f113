/* libFuzzer target: the message ring of src/core/ring.c, driven by a script
 * of operations, including writes of arbitrary bytes into the ring's data
 * area -- what a broken or hostile process sharing the segment could do.
 *
 * Input: byte 0 picks the capacity (4 KiB << (b & 3)); then operations:
 *   'p' len:2 seed:1         cmp_ring_offer of one message
 *   'w' len:3 seed:1         cmp_ring_write (streams above half the ring;
 *                            len is taken modulo WRITE_MAX)
 *   't' cap:2 max:1          cmp_ring_take into a buffer of cap bytes
 *   'c' off:2 n:1 bytes:n    overwrite n bytes of the data area at off
 * (any other byte is skipped). Nothing waits: deadlines are "now", and the
 * waits that ignore a deadline (a stream's next chunk, room for an abort
 * record) are cut short by a timer signal (CMP_EINTR, then abandon).
 *
 * Until the first 'c', every message taken must be the next complete one
 * put, whole (a model FIFO). After it, only memory safety and termination
 * are checked. */
#include "ring.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_MODEL 4096
#define TAKE_MAX_ITEMS 16
#define WRITE_MAX (1u << 18)

#define CHECK(cond)                                                                             \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "fuzz_ring: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

typedef struct {
    const uint8_t *p;
    size_t left;
} reader;

static unsigned
next(reader *in, int nbytes)
{
    unsigned v = 0;
    for (int i = 0; i < nbytes; i++) {
        v <<= 8;
        if (in->left > 0) {
            v |= *in->p++;
            in->left--;
        }
    }
    return v;
}

/* Messages known to be whole in the ring, oldest first. */
static struct {
    size_t len;
    uint8_t seed;
} model[MAX_MODEL];
static size_t model_head, model_n;
static int corrupted;
/* A streamed message was abandoned after its first chunk went in: a take
 * may meet that chunk (CMP_NEED for a message that never comes). */
static int ghosts;

static void
fill(uint8_t *buf, size_t len, uint8_t seed)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(seed + i * 131 + (i >> 8));
}

static void
model_push(size_t len, uint8_t seed)
{
    if (model_n == MAX_MODEL) {
        corrupted = 1; /* stop checking rather than grow */
        return;
    }
    model[(model_head + model_n) % MAX_MODEL].len = len;
    model[(model_head + model_n) % MAX_MODEL].seed = seed;
    model_n++;
}

static void
on_alarm(int sig)
{
    (void)sig;
}

/* Arm a one-shot 2 ms timer (a blocking wait inside comes back CMP_EINTR), or
 * disarm it. Its own signal: libFuzzer's -timeout owns SIGALRM. */
#define TIMER_SIGNAL (SIGRTMIN + 3)
static timer_t timer;

static void
timer_setup(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm; /* no SA_RESTART: a futex wait returns EINTR */
    CHECK(sigaction(TIMER_SIGNAL, &sa, NULL) == 0);
    struct sigevent ev;
    memset(&ev, 0, sizeof(ev));
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = TIMER_SIGNAL;
    ev._sigev_un._tid = gettid();
    CHECK(timer_create(CLOCK_MONOTONIC, &ev, &timer) == 0);
}

static void
alarm_ms(int on)
{
    struct itimerspec t = {{0, 0}, {0, on ? 2000000 : 0}};
    timer_settime(timer, 0, &t, NULL);
}

static uint8_t scratch[WRITE_MAX];

static void
op_put(cmp_ring *r, reader *in)
{
    size_t len = next(in, 2);
    uint8_t seed = (uint8_t)next(in, 1);
    fill(scratch, len, seed);
    struct iovec iov = {scratch, len};
    cmp_ring_msg m = {&iov, 1, len};
    size_t accepted = 0, written = 0;
    alarm_ms(1);
    int st = cmp_ring_offer(r, &m, 1, 0, 0, CMP_RING_TRY, &accepted, &written);
    alarm_ms(0);
    if (st == CMP_OK && written == 1)
        model_push(len, seed);
    else if (accepted == 1)
        cmp_ring_unreserve(r, 1); /* deferred: an overflow would write it later */
}

static void
op_write(cmp_ring *r, reader *in)
{
    size_t len = next(in, 3) % WRITE_MAX;
    uint8_t seed = (uint8_t)next(in, 1);
    fill(scratch, len, seed);
    struct iovec iov = {scratch, len};
    cmp_ring_msg m = {&iov, 1, len};
    cmp_ring_wop op;
    cmp_ring_wop_init(&op, &m, 0);
    op.deadline = cmp_monotonic_ns();
    alarm_ms(1);
    int st = cmp_ring_write(r, &op);
    alarm_ms(0);
    if (st == CMP_OK) {
        model_push(len, seed);
        return;
    }
    if (op.streaming)
        ghosts = 1;
    cmp_ring_write_abandon(r, &op);
}

static uint8_t expect[WRITE_MAX];

static void
check_taken(const cmp_ring_rop *op, const uint8_t *buf)
{
    size_t off = 0;
    for (size_t i = 0; i < op->n; i++) {
        CHECK(model_n > 0);
        size_t len = model[model_head].len;
        CHECK(op->lens[i] == len);
        fill(expect, len, model[model_head].seed);
        CHECK(memcmp(buf + off, expect, len) == 0);
        off += len;
        model_head = (model_head + 1) % MAX_MODEL;
        model_n--;
    }
}

static void
op_take(cmp_ring *r, reader *in)
{
    size_t cap = next(in, 2) * 16;
    size_t max_items = next(in, 1) % TAKE_MAX_ITEMS + 1;
    /* Exactly cap bytes from malloc, so reading or writing past them is seen. */
    uint8_t *buf = malloc(cap ? cap : 1);
    size_t lens[TAKE_MAX_ITEMS];
    cmp_ring_rop op;
    CHECK(buf != NULL);
    cmp_ring_rop_init(&op, buf, cap, lens, max_items);
    alarm_ms(1);
    int st = cmp_ring_take(r, &op, cmp_monotonic_ns());
    alarm_ms(0);
    if (st == CMP_EINTR)
        cmp_ring_take_abandon(r, &op);
    if (!corrupted) {
        if (st == CMP_OK)
            check_taken(&op, buf);
        else if (st == CMP_NEED)
            CHECK(op.need > cap && (ghosts || (model_n > 0 && op.need == model[model_head].len)));
        else if (st == CMP_EEMPTY)
            CHECK(model_n == 0);
    }
    free(buf);
}

static void
op_corrupt(cmp_ring *r, reader *in)
{
    size_t cap = cmp_ring_capacity(r);
    size_t off = next(in, 2);
    size_t n = next(in, 1);
    unsigned char *data = (unsigned char *)r + CMP_RING_HEADER;
    for (size_t i = 0; i < n; i++)
        data[(off + i) & (cap - 1)] = (uint8_t)next(in, 1);
    corrupted = 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        timer_setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    reader in = {data + 1, size - 1};
    size_t capacity = CMP_RING_MIN_CAPACITY << (data[0] & 3);
    size_t segment = cmp_ring_segment_size(capacity);
    /* Heap memory of exactly the segment's size: ASan sees any access outside it. */
    cmp_ring *r = aligned_alloc(64, segment);
    CHECK(r != NULL);
    memset(r, 0, segment);
    CHECK(cmp_ring_init(r, capacity, 0, 0) == CMP_OK);
    model_head = model_n = 0;
    corrupted = ghosts = 0;
    while (in.left > 0) {
        switch (next(&in, 1)) {
        case 'p': op_put(r, &in); break;
        case 'w': op_write(r, &in); break;
        case 't': op_take(r, &in); break;
        case 'c': op_corrupt(r, &in); break;
        default: break;
        }
    }
    free(r);
    return 0;
}
