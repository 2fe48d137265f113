/* The shared-memory message ring behind Queue and SimpleQueue (see ring.h). */
#include "ring.h"

#include "futex.h"
#include "proc.h"
#include "shm.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define RING_MAGIC 0x31676e69726d6370ULL /* "pcmring1" */

/* tail / head: byte position (low bits) and message count (high bits). */
#define POS_BITS 40
#define POS_MASK (((uint64_t)1 << POS_BITS) - 1)
#define CNT_MASK (((uint64_t)1 << (64 - POS_BITS)) - 1)

#define LOCK_WAITERS 0x80000000u

/* Record flags. A message is one record with no flags, or a first chunk
 * (MORE; its payload starts with the message's total length as a uint64),
 * chunks with CONT|MORE, and a last chunk with CONT. ABORT|CONT ends a
 * streamed message whose producer went away. */
#define REC_MORE 1u
#define REC_CONT 2u
#define REC_ABORT 4u
#define REC_MARK 8u /* the producer's wop.mark (first record only) */
#define REC_HDR 8u

/* futex bitsets on data_seq and space_seq */
#define BIT_DATA 1u   /* consumers waiting for a message */
#define BIT_STREAM 2u /* the consumer receiving a streamed message */
#define BIT_SLOT 1u   /* bounded producers waiting for a slot */
#define BIT_SPACE 2u  /* the put-lock holder waiting for bytes */

/* Busy-wait iterations (each a cpu_relax) before sleeping. */
#define SPIN_LOCK 200
#define SPIN_WAIT 1000

#define CACHE_LINE 64

struct cmp_ring {
    /* constant after init */
    uint64_t magic;
    uint64_t capacity;
    uint32_t maxsize;
    uint32_t flags;
    char pad0[CACHE_LINE - 24];
    /* producers */
    _Atomic uint32_t put_lock;
    _Atomic uint32_t put_open; /* a streamed message is unfinished */
    _Atomic uint64_t tail;
    char pad1[CACHE_LINE - 16];
    /* consumers */
    _Atomic uint32_t get_lock;
    uint32_t pad_get;
    _Atomic uint64_t head;
    char pad2[CACHE_LINE - 16];
    /* counters */
    _Atomic uint32_t reserved;
    _Atomic uint32_t unfinished;
    _Atomic uint32_t join_waiters;
    char pad3[CACHE_LINE - 12];
    /* consumers sleep here */
    _Atomic uint32_t data_seq;
    _Atomic uint32_t data_waiters;
    _Atomic uint32_t stream_waiters;
    char pad4[CACHE_LINE - 12];
    /* producers sleep here */
    _Atomic uint32_t space_seq;
    _Atomic uint32_t slot_waiters;
    _Atomic uint32_t space_waiters;
    char pad5[CACHE_LINE - 12];
};

_Static_assert(sizeof(struct cmp_ring) <= CMP_RING_HEADER, "ring header too large");

#define DATA(r) ((unsigned char *)(r) + CMP_RING_HEADER)

#define LOAD(p, mo) atomic_load_explicit((p), memory_order_##mo)
#define STORE(p, v, mo) atomic_store_explicit((p), (v), memory_order_##mo)

static inline uint64_t
POS(uint64_t x)
{
    return x & POS_MASK;
}
static inline uint64_t
CNT(uint64_t x)
{
    return x >> POS_BITS;
}

static inline uint64_t
mkpos(uint64_t pos, uint64_t cnt)
{
    return (pos & POS_MASK) | ((cnt & CNT_MASK) << POS_BITS);
}

static inline size_t
rec_size(size_t len)
{
    return REC_HDR + ((len + 7) & ~(size_t)7);
}

static inline size_t
bytes_used(uint64_t h, uint64_t t)
{
    return (size_t)((POS(t) - POS(h)) & POS_MASK);
}

static inline uint64_t
msgs_in(uint64_t h, uint64_t t)
{
    return (CNT(t) - CNT(h)) & CNT_MASK;
}

static inline int
deadline_passed(int64_t deadline)
{
    return deadline != CMP_FOREVER && cmp_monotonic_ns() >= deadline;
}

/* ------------------------------------------------------------------------ */
/* Layout                                                                   */

size_t
cmp_ring_segment_size(size_t capacity)
{
    return CMP_RING_HEADER + capacity;
}

int
cmp_ring_init(void *mem, size_t capacity, uint32_t maxsize, uint32_t flags)
{
    if (capacity < CMP_RING_MIN_CAPACITY || capacity > CMP_RING_MAX_CAPACITY
        || (capacity & (capacity - 1)) != 0) {
        errno = EINVAL;
        return CMP_ERRNO;
    }
    cmp_ring *r = mem;
    r->capacity = capacity;
    r->maxsize = maxsize;
    r->flags = flags;
    atomic_thread_fence(memory_order_release);
    r->magic = RING_MAGIC;
    return CMP_OK;
}

int
cmp_ring_check(const void *mem, size_t size)
{
    const cmp_ring *r = mem;
    if (size < CMP_RING_HEADER || r->magic != RING_MAGIC || r->capacity < CMP_RING_MIN_CAPACITY
        || r->capacity > CMP_RING_MAX_CAPACITY || (r->capacity & (r->capacity - 1)) != 0
        || cmp_ring_segment_size(r->capacity) > size) {
        errno = EINVAL;
        return CMP_ERRNO;
    }
    return CMP_OK;
}

size_t
cmp_ring_capacity(const cmp_ring *r)
{
    return (size_t)r->capacity;
}
uint32_t
cmp_ring_maxsize(const cmp_ring *r)
{
    return r->maxsize;
}
uint32_t
cmp_ring_flags(const cmp_ring *r)
{
    return r->flags;
}

uint64_t
cmp_ring_qsize(const cmp_ring *r)
{
    /* head first: the tail read after it is never behind it */
    uint64_t h = LOAD(&r->head, acquire);
    uint64_t t = LOAD(&r->tail, acquire);
    return msgs_in(h, t) + LOAD(&r->reserved, relaxed);
}

int
cmp_ring_full(const cmp_ring *r)
{
    return r->maxsize != 0 && cmp_ring_qsize(r) >= r->maxsize;
}

int
cmp_ring_empty(const cmp_ring *r)
{
    return POS(LOAD(&r->tail, acquire)) == POS(LOAD(&r->head, acquire));
}

int
cmp_ring_put_busy(const cmp_ring *r)
{
    return LOAD(&r->put_lock, acquire) != 0;
}

uint32_t
cmp_ring_unfinished(const cmp_ring *r)
{
    return LOAD(&r->unfinished, acquire);
}

/* ------------------------------------------------------------------------ */
/* Locks: the holder's pid, bit 31 when someone may be sleeping             */

/* Has process `pid` exited (a zombie counts)? */
static int
pid_dead(uint32_t pid)
{
    if (pid == 0 || (pid_t)pid == cmp_self_pid())
        return 0;
    int fd = cmp_pidfd_open((pid_t)pid);
    if (fd < 0) {
        if (errno == ESRCH)
            return 1;
        return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, 0);
    close(fd);
    return n > 0;
}

static inline int
lock_try(_Atomic uint32_t *w, uint32_t self)
{
    uint32_t free_ = 0;
    return atomic_compare_exchange_strong_explicit(w, &free_, self, memory_order_acquire,
                                                   memory_order_relaxed);
}

/* Take the lock over from its holder if the holder is dead and the word
 * still reads `seen`. */
static int
lock_take_over(_Atomic uint32_t *w, uint32_t seen, uint32_t self)
{
    uint32_t holder = seen & ~LOCK_WAITERS;
    if (holder == 0 || !pid_dead(holder))
        return 0;
    return atomic_compare_exchange_strong_explicit(w, &seen, self | LOCK_WAITERS,
                                                   memory_order_acquire, memory_order_relaxed);
}

/* CMP_OK, CMP_ETIMEDOUT, CMP_EINTR or CMP_ERRNO. */
static int
lock_acquire(_Atomic uint32_t *w, int64_t deadline, int spin)
{
    uint32_t self = (uint32_t)cmp_self_pid();
    if (CMP_LIKELY(lock_try(w, self)))
        return CMP_OK;
    for (int i = 0; i < spin; i++) {
        cmp_cpu_relax();
        if (LOAD(w, relaxed) == 0 && lock_try(w, self))
            return CMP_OK;
    }
    uint32_t mine = self; /* after sleeping: | LOCK_WAITERS, as others may sleep */
    for (;;) {
        uint32_t v = LOAD(w, relaxed);
        if (v == 0) {
            if (atomic_compare_exchange_strong_explicit(w, &v, mine, memory_order_acquire,
                                                        memory_order_relaxed))
                return CMP_OK;
            continue;
        }
        int64_t now = cmp_monotonic_ns();
        if (now >= deadline)
            return CMP_ETIMEDOUT;
        if (!(v & LOCK_WAITERS)) {
            if (!atomic_compare_exchange_strong_explicit(
                        w, &v, v | LOCK_WAITERS, memory_order_relaxed, memory_order_relaxed))
                continue;
            v |= LOCK_WAITERS;
        }
        int64_t until = deadline - now > CMP_RING_PROBE_NS ? now + CMP_RING_PROBE_NS : deadline;
        int st = cmp_futex_wait(w, v, CMP_FUTEX_ANY, until);
        if (st == CMP_EINTR || st == CMP_ERRNO)
            return st;
        if (st == CMP_ETIMEDOUT && lock_take_over(w, v, self))
            return CMP_OK;
        mine = self | LOCK_WAITERS;
    }
}

static inline void
lock_release(_Atomic uint32_t *w)
{
    uint32_t old = atomic_exchange_explicit(w, 0, memory_order_release);
    if (old & LOCK_WAITERS)
        cmp_futex_wake(w, 1, CMP_FUTEX_ANY);
}

/* ------------------------------------------------------------------------ */
/* Copying, with the wrap-around                                            */

static void
copy_in(cmp_ring *r, uint64_t pos, const void *src, size_t n)
{
    size_t cap = (size_t)r->capacity, off = (size_t)(pos & (cap - 1)), first = cap - off;
    if (n <= first) {
        memcpy(DATA(r) + off, src, n);
    }
    else {
        memcpy(DATA(r) + off, src, first);
        memcpy(DATA(r), (const char *)src + first, n - first);
    }
}

static void
copy_out(const cmp_ring *r, uint64_t pos, void *dst, size_t n)
{
    size_t cap = (size_t)r->capacity, off = (size_t)(pos & (cap - 1)), first = cap - off;
    if (n <= first) {
        memcpy(dst, DATA(r) + off, n);
    }
    else {
        memcpy(dst, DATA(r) + off, first);
        memcpy((char *)dst + first, DATA(r), n - first);
    }
}

/* Copy n bytes of a message's pieces, from piece *pi at offset *po. */
static void
copy_in_msg(cmp_ring *r, uint64_t pos, const cmp_ring_msg *m, size_t *pi, size_t *po, size_t n)
{
    while (n > 0) {
        const struct iovec *v = &m->iov[*pi];
        size_t k = v->iov_len - *po;
        if (k > n)
            k = n;
        copy_in(r, pos, (const char *)v->iov_base + *po, k);
        pos += k;
        n -= k;
        *po += k;
        if (*po == v->iov_len) {
            (*pi)++;
            *po = 0;
        }
    }
}

static void
write_header(cmp_ring *r, uint64_t pos, uint32_t len, uint32_t flags)
{
    uint32_t hdr[2] = {len, flags};
    copy_in(r, pos, hdr, sizeof(hdr));
}

static void
read_header(const cmp_ring *r, uint64_t pos, uint32_t *len, uint32_t *flags)
{
    uint32_t hdr[2];
    copy_out(r, pos, hdr, sizeof(hdr));
    *len = hdr[0];
    *flags = hdr[1];
}

/* ------------------------------------------------------------------------ */
/* Wake-ups                                                                 */

static void
wake(_Atomic uint32_t *seq, _Atomic uint32_t *waiters, int n, uint32_t bit)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (LOAD(waiters, relaxed) != 0) {
        atomic_fetch_add_explicit(seq, 1, memory_order_seq_cst);
        cmp_futex_wake(seq, n, bit);
    }
}

static void
wake_consumers(cmp_ring *r, size_t n)
{
    wake(&r->data_seq, &r->data_waiters, n > INT_MAX ? INT_MAX : (int)n, BIT_DATA);
}

/* After a chunk of a streamed message (or an abort record). */
static void
wake_stream(cmp_ring *r)
{
    wake(&r->data_seq, &r->stream_waiters, 1, BIT_STREAM);
    /* Nobody may be receiving it (its consumer died): someone must skip it. */
    wake(&r->data_seq, &r->data_waiters, 1, BIT_DATA);
}

static void
wake_producers(cmp_ring *r, size_t slots)
{
    wake(&r->space_seq, &r->space_waiters, INT_MAX, BIT_SPACE);
    if (slots > 0 && r->maxsize != 0)
        wake(&r->space_seq, &r->slot_waiters, slots > INT_MAX ? INT_MAX : (int)slots, BIT_SLOT);
}

/* Sleep on seq while cond(r, arg) is false: spin, count ourselves as a
 * waiter, re-check, sleep. CMP_OK when cond holds, else the futex status. */
typedef int (*ring_cond)(const cmp_ring *r, uint64_t arg);

static int
wait_until(cmp_ring *r, ring_cond cond, uint64_t arg, _Atomic uint32_t *seq,
           _Atomic uint32_t *waiters, uint32_t bit, int64_t deadline, int spin)
{
    if (cond(r, arg))
        return CMP_OK;
    if (deadline <= 0 || (deadline != CMP_FOREVER && deadline <= cmp_monotonic_ns()))
        spin = 0;
    for (int i = 0; i < spin; i++) {
        cmp_cpu_relax();
        if (cond(r, arg))
            return CMP_OK;
    }
    for (;;) {
        atomic_fetch_add_explicit(waiters, 1, memory_order_seq_cst);
        uint32_t s = LOAD(seq, seq_cst);
        if (cond(r, arg)) {
            atomic_fetch_sub_explicit(waiters, 1, memory_order_relaxed);
            return CMP_OK;
        }
        int st = CMP_ETIMEDOUT;
        if (deadline != 0 && (deadline == CMP_FOREVER || deadline > cmp_monotonic_ns()))
            st = cmp_futex_wait(seq, s, bit, deadline);
        atomic_fetch_sub_explicit(waiters, 1, memory_order_relaxed);
        if (cond(r, arg))
            return CMP_OK;
        if (st != CMP_OK)
            return st;
    }
}

static int
has_data(const cmp_ring *r, uint64_t h)
{
    (void)h;
    return POS(LOAD(&r->tail, acquire)) != POS(LOAD(&r->head, acquire));
}

static int
has_data_after(const cmp_ring *r, uint64_t h)
{
    return POS(LOAD(&r->tail, acquire)) != POS(h);
}

static int
has_slot(const cmp_ring *r, uint64_t unused)
{
    (void)unused;
    return cmp_ring_qsize(r) < r->maxsize;
}

static int
has_space(const cmp_ring *r, uint64_t need)
{
    uint64_t h = LOAD(&r->head, acquire), t = LOAD(&r->tail, relaxed);
    return r->capacity - bytes_used(h, t) >= need;
}

/* ------------------------------------------------------------------------ */
/* Producers                                                                */

/* With the put lock held: end a streamed message left unfinished by a
 * producer that died or was interrupted. wait: wait for the 8 bytes.
 * CMP_OK, CMP_EFULL (no room and !wait), CMP_EINTR, CMP_ERRNO. */
static int
repair(cmp_ring *r, int wait)
{
    if (CMP_LIKELY(LOAD(&r->put_open, acquire) == 0))
        return CMP_OK;
    if (!has_space(r, REC_HDR)) {
        if (!wait)
            return CMP_EFULL;
        int st = wait_until(r, has_space, REC_HDR, &r->space_seq, &r->space_waiters, BIT_SPACE,
                            CMP_FOREVER, SPIN_WAIT);
        if (st != CMP_OK)
            return st;
    }
    uint64_t t = LOAD(&r->tail, relaxed);
    write_header(r, POS(t), 0, REC_CONT | REC_ABORT);
    STORE(&r->tail, mkpos(POS(t) + REC_HDR, CNT(t)), release);
    STORE(&r->put_open, 0, release);
    wake_stream(r);
    return CMP_OK;
}

static void
task_added(cmp_ring *r, size_t n)
{
    if (r->flags & CMP_RING_JOINABLE)
        atomic_fetch_add_explicit(&r->unfinished, (uint32_t)n, memory_order_seq_cst);
}

/* Count n messages as accepted but not in the ring. */
static void
defer(cmp_ring *r, size_t n)
{
    task_added(r, n);
    atomic_fetch_add_explicit(&r->reserved, (uint32_t)n, memory_order_relaxed);
}

int
cmp_ring_offer(cmp_ring *r, const cmp_ring_msg *msgs, size_t count, int defer_all, int64_t deadline,
               int flags, size_t *accepted, size_t *written)
{
    size_t cap = (size_t)r->capacity, i = 0, published = 0;
    uint32_t maxsize = r->maxsize;
    uint32_t self = (uint32_t)cmp_self_pid();
    int locked = 0, st = CMP_OK, spin = deadline_passed(deadline) ? 0 : SPIN_WAIT;

    *accepted = *written = 0;
    if (maxsize == 0 && defer_all) {
        /* Unbounded, behind this process's overflow: only count them. */
        defer(r, count);
        *accepted = count;
        return CMP_OK;
    }
    while (i < count) {
        if (!locked) {
            if (maxsize != 0) {
                st = wait_until(r, has_slot, 0, &r->space_seq, &r->slot_waiters, BIT_SLOT, deadline,
                                spin);
                if (st != CMP_OK)
                    break;
            }
            if (!lock_try(&r->put_lock, self)) {
                int64_t lock_deadline = 0;
                if (flags & CMP_RING_WAIT_LOCK) {
                    lock_deadline = deadline;
                    if (maxsize == 0) /* never wait long: defer instead */
                        lock_deadline = cmp_monotonic_ns() + CMP_RING_LOCK_PATIENCE_NS;
                }
                st = lock_acquire(&r->put_lock, lock_deadline, SPIN_LOCK);
                if (st == CMP_ETIMEDOUT && maxsize == 0 && !(flags & CMP_RING_TRY)) {
                    /* Busy (a large message streaming in): defer the rest. */
                    defer(r, count - i);
                    i = count;
                    st = CMP_OK;
                    break;
                }
                if (st != CMP_OK)
                    break;
            }
            locked = 1;
            if (repair(r, 0) != CMP_OK)
                defer_all = 1;
        }
        uint64_t h = LOAD(&r->head, acquire), t = LOAD(&r->tail, relaxed);
        if (maxsize != 0 && msgs_in(h, t) + LOAD(&r->reserved, relaxed) >= maxsize) {
            lock_release(&r->put_lock);
            locked = 0;
            if (published) {
                wake_consumers(r, published);
                published = 0;
            }
            continue;
        }
        size_t rec = rec_size(msgs[i].len);
        if (!defer_all && rec <= cap / 2 && rec <= cap - bytes_used(h, t)) {
            size_t pi = 0, po = 0;
            task_added(r, 1);
            write_header(r, POS(t), (uint32_t)msgs[i].len, 0);
            copy_in_msg(r, POS(t) + REC_HDR, &msgs[i], &pi, &po, msgs[i].len);
            STORE(&r->tail, mkpos(POS(t) + rec, CNT(t) + 1), release);
            published++;
            (*written)++;
        }
        else {
            /* This one and every later one go through the overflow, in order. */
            defer_all = 1;
            defer(r, 1);
        }
        i++;
    }
    *accepted = i;
    if (locked)
        lock_release(&r->put_lock);
    if (published)
        wake_consumers(r, published);
    if (st == CMP_ETIMEDOUT)
        st = CMP_EFULL;
    if (st != CMP_OK && maxsize != 0 && has_slot(r, 0)) {
        /* We may have been woken for a slot we are not taking: pass it on. */
        wake(&r->space_seq, &r->slot_waiters, 1, BIT_SLOT);
    }
    return st;
}

int
cmp_ring_reserve(cmp_ring *r, int64_t deadline)
{
    size_t accepted, written;
    cmp_ring_msg none = {NULL, 0, 0};
    return cmp_ring_offer(r, &none, 1, 1, deadline, CMP_RING_WAIT_LOCK, &accepted, &written);
}

void
cmp_ring_wop_init(cmp_ring_wop *op, const cmp_ring_msg *msg, int reserved)
{
    memset(op, 0, sizeof(*op));
    op->msg = *msg;
    op->reserved = reserved;
    op->deadline = CMP_FOREVER;
}

static void
unreserve(cmp_ring *r)
{
    atomic_fetch_sub_explicit(&r->reserved, 1, memory_order_relaxed);
}

int
cmp_ring_write(cmp_ring *r, cmp_ring_wop *op)
{
    size_t cap = (size_t)r->capacity, len = op->msg.len;
    int st;
    if (!op->locked) {
        st = lock_acquire(&r->put_lock, op->deadline, SPIN_LOCK);
        if (st != CMP_OK)
            return st;
        op->locked = 1;
    }
    if (op->on_lock != NULL && !op->hooked) {
        st = op->on_lock(op->arg);
        if (st != CMP_OK) {
            lock_release(&r->put_lock);
            op->locked = 0;
            return st;
        }
        op->hooked = 1;
    }
    if (!op->streaming) {
        st = repair(r, 1);
        if (st != CMP_OK)
            return st;
    }
    size_t rec = rec_size(len);
    if (rec <= cap / 2) {
        st = wait_until(r, has_space, rec, &r->space_seq, &r->space_waiters, BIT_SPACE,
                        op->deadline, SPIN_WAIT);
        if (st != CMP_OK)
            return st;
        uint64_t t = LOAD(&r->tail, relaxed);
        write_header(r, POS(t), (uint32_t)len, op->mark ? REC_MARK : 0);
        copy_in_msg(r, POS(t) + REC_HDR, &op->msg, &op->piece, &op->piece_off, len);
        STORE(&r->tail, mkpos(POS(t) + rec, CNT(t) + 1), release);
        if (op->reserved)
            unreserve(r);
        lock_release(&r->put_lock);
        op->locked = 0;
        wake_consumers(r, 1);
        if (op->on_publish != NULL)
            op->on_publish(op->arg);
        return CMP_OK;
    }
    /* Stream it: chunks of up to a quarter of the ring. */
    size_t chunk_max = cap / 4 - REC_HDR;
    while (!op->streaming || op->done < len) {
        int first = !op->streaming;
        size_t extra = first ? sizeof(uint64_t) : 0;
        size_t part = len - op->done;
        if (part > chunk_max - extra)
            part = chunk_max - extra;
        size_t crec = rec_size(part + extra);
        st = wait_until(r, has_space, crec, &r->space_seq, &r->space_waiters, BIT_SPACE,
                        op->deadline, SPIN_WAIT);
        if (st != CMP_OK)
            return st;
        uint32_t flags = (first ? (op->mark ? REC_MARK : 0) : REC_CONT)
                         | (op->done + part < len ? REC_MORE : 0);
        uint64_t t = LOAD(&r->tail, relaxed);
        write_header(r, POS(t), (uint32_t)(part + extra), flags);
        if (first) {
            uint64_t total = len;
            copy_in(r, POS(t) + REC_HDR, &total, sizeof(total));
            STORE(&r->put_open, 1, seq_cst);
        }
        copy_in_msg(r, POS(t) + REC_HDR + extra, &op->msg, &op->piece, &op->piece_off, part);
        STORE(&r->tail, mkpos(POS(t) + crec, CNT(t) + (first ? 1 : 0)), release);
        op->done += part;
        if (first) {
            op->streaming = 1;
            if (op->reserved)
                unreserve(r);
            wake_consumers(r, 1);
            if (op->on_publish != NULL)
                op->on_publish(op->arg);
        }
        else {
            wake_stream(r);
        }
    }
    STORE(&r->put_open, 0, release);
    lock_release(&r->put_lock);
    op->locked = 0;
    op->streaming = 0;
    return CMP_OK;
}

static void
wake_joiners(cmp_ring *r)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (LOAD(&r->join_waiters, relaxed) != 0)
        cmp_futex_wake(&r->unfinished, INT_MAX, CMP_FUTEX_ANY);
}

static void
task_removed(cmp_ring *r)
{
    if (!(r->flags & CMP_RING_JOINABLE))
        return;
    if (atomic_fetch_sub_explicit(&r->unfinished, 1, memory_order_seq_cst) == 1)
        wake_joiners(r);
}

void
cmp_ring_write_abandon(cmp_ring *r, cmp_ring_wop *op)
{
    /* A stream left open is ended (abort record) by the next put-lock holder. */
    if (op->reserved && !op->streaming) {
        unreserve(r);
        task_removed(r);
    }
    if (op->locked)
        lock_release(&r->put_lock);
    op->locked = 0;
    op->streaming = 0;
    op->hooked = 0;
    wake_producers(r, 1);
}

void
cmp_ring_unreserve(cmp_ring *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unreserve(r);
        task_removed(r);
    }
    wake_producers(r, n);
}

/* ------------------------------------------------------------------------ */
/* Consumers                                                                */

/* Publish the first words of the message at payload position pos (see
 * "Claims" in ring.h); len: the bytes of the message available there. */
static void
claim_store(const cmp_ring *r, _Atomic uint64_t *claim, uint64_t pos, size_t len)
{
    uint64_t w[CMP_RING_CLAIM_WORDS];
    if (claim == NULL || len < sizeof(w))
        return;
    copy_out(r, pos, w, sizeof(w));
    for (int i = CMP_RING_CLAIM_WORDS - 1; i > 0; i--)
        STORE(&claim[i], w[i], relaxed);
    STORE(&claim[0], w[0], release);
}

void
cmp_ring_rop_init(cmp_ring_rop *op, unsigned char *buf, size_t cap, size_t *lens, size_t max_items)
{
    memset(op, 0, sizeof(*op));
    op->buf = buf;
    op->cap = cap;
    op->lens = lens;
    op->max_items = max_items ? max_items : 1;
}

/* With the get lock held, receiving a streamed message: no chunk came for a
 * while. If its producer is gone (dead, or interrupted and the put lock
 * free), end the message ourselves. */
static void
probe_producer(cmp_ring *r)
{
    uint32_t self = (uint32_t)cmp_self_pid();
    uint32_t v = LOAD(&r->put_lock, acquire);
    int got = v == 0 ? (LOAD(&r->put_open, acquire) && lock_try(&r->put_lock, self))
                     : lock_take_over(&r->put_lock, v, self);
    if (!got)
        return;
    repair(r, 0); /* the ring is empty from our side: the record fits */
    lock_release(&r->put_lock);
}

int
cmp_ring_take(cmp_ring *r, cmp_ring_rop *op, int64_t deadline)
{
    int st;
    op->n = 0;
    if (op->locked)
        goto stream;
    for (;;) {
        int spin = deadline_passed(deadline) ? 0 : SPIN_WAIT;
        st = wait_until(r, has_data, 0, &r->data_seq, &r->data_waiters, BIT_DATA, deadline, spin);
        if (st == CMP_ETIMEDOUT)
            return CMP_EEMPTY;
        if (st != CMP_OK)
            return st;
        st = lock_acquire(&r->get_lock, deadline, SPIN_LOCK);
        if (st == CMP_ETIMEDOUT)
            return CMP_EEMPTY;
        if (st != CMP_OK)
            return st;

        size_t n = 0, used = 0, freed = 0;
        int result = CMP_OK;
        uint64_t h = LOAD(&r->head, relaxed);
        for (;;) {
            uint64_t t = LOAD(&r->tail, acquire);
            if (POS(h) == POS(t))
                break;
            uint32_t len, flags;
            read_header(r, POS(h), &len, &flags);
            size_t rec = rec_size(len);
            if (rec > bytes_used(h, t)
                || ((flags & REC_MORE) && !(flags & REC_CONT) && len < sizeof(uint64_t))) {
                /* A header no producer wrote (the segment was scribbled on):
                 * refuse it rather than read past what was published. */
                result = CMP_EBADMSG;
                break;
            }
            if (flags & (REC_CONT | REC_ABORT)) {
                /* the rest of a message whose consumer went away */
                h = mkpos(POS(h) + rec, CNT(h));
                STORE(&r->head, h, release);
                freed = 1;
                continue;
            }
            if (!(flags & REC_MORE)) {
                if (n == op->max_items)
                    break;
                if (len > op->cap - used) {
                    if (n == 0) {
                        op->need = len;
                        result = CMP_NEED;
                    }
                    break;
                }
                copy_out(r, POS(h) + REC_HDR, op->buf + used, len);
                if (n == 0) {
                    claim_store(r, op->claim, POS(h) + REC_HDR, len);
                    op->mark = (flags & REC_MARK) != 0;
                }
                op->lens[n++] = len;
                used += len;
                h = mkpos(POS(h) + rec, CNT(h) + 1);
                STORE(&r->head, h, release);
                continue;
            }
            /* the first chunk of a streamed message */
            if (n > 0)
                break;
            uint64_t total;
            copy_out(r, POS(h) + REC_HDR, &total, sizeof(total));
            if (total > op->cap) {
                op->need = (size_t)total;
                result = CMP_NEED;
                break;
            }
            size_t part = len - sizeof(total);
            if (part > total)
                part = (size_t)total;
            copy_out(r, POS(h) + REC_HDR + sizeof(total), op->buf, part);
            claim_store(r, op->claim, POS(h) + REC_HDR + sizeof(total), part);
            h = mkpos(POS(h) + rec, CNT(h) + 1);
            STORE(&r->head, h, release);
            op->total = (size_t)total;
            op->got = part;
            op->mark = (flags & REC_MARK) != 0;
            op->locked = 1;
            wake_producers(r, 1);
            goto stream;
        }
        lock_release(&r->get_lock);
        if (n > 0 || freed)
            wake_producers(r, n);
        if (n > 0) {
            op->n = n;
            /* More left and someone asleep: the producer woke one per message. */
            if (has_data(r, 0))
                wake_consumers(r, 1);
            return CMP_OK;
        }
        if (result != CMP_OK)
            return result; /* CMP_NEED or CMP_EBADMSG */
        if (deadline_passed(deadline))
            return CMP_EEMPTY;
    }

stream:
    for (;;) {
        uint64_t h = LOAD(&r->head, relaxed);
        if (!has_data_after(r, h)) {
            /* Wake up every PROBE_NS to see whether the producer is still
             * there, and give up (still locked, resumable) at the deadline. */
            int64_t dl = op->stream_deadline != 0 ? op->stream_deadline : deadline;
            int64_t now = cmp_monotonic_ns();
            int64_t until = dl - now > CMP_RING_PROBE_NS ? now + CMP_RING_PROBE_NS : dl;
            st = wait_until(r, has_data_after, h, &r->data_seq, &r->stream_waiters, BIT_STREAM,
                            until, until > now ? SPIN_WAIT : 0);
            if (st == CMP_ETIMEDOUT) {
                int late = deadline_passed(dl);
                if (!(late && dl == CMP_RING_NOW))
                    probe_producer(r);
                if (late && !has_data_after(r, h))
                    return CMP_ETIMEDOUT;
                continue;
            }
            if (st != CMP_OK)
                return st; /* CMP_EINTR: resume later, still locked */
        }
        uint32_t len, flags;
        read_header(r, POS(h), &len, &flags);
        size_t rec = rec_size(len);
        if (rec > bytes_used(h, LOAD(&r->tail, acquire))) {
            op->locked = 0; /* a scribbled header, as above */
            lock_release(&r->get_lock);
            return CMP_EBADMSG;
        }
        int bad = !(flags & REC_CONT) || (flags & REC_ABORT) || len > op->total - op->got
                  || (!(flags & REC_MORE) && op->got + len != op->total);
        if (bad) {
            /* Its producer went away: drop what we have. A record that is
             * not a continuation is the next message: leave it there. */
            if (flags & REC_CONT) {
                STORE(&r->head, mkpos(POS(h) + rec, CNT(h)), release);
            }
            op->locked = 0;
            lock_release(&r->get_lock);
            wake_producers(r, 0);
            return cmp_ring_take(r, op, deadline);
        }
        copy_out(r, POS(h) + REC_HDR, op->buf + op->got, len);
        op->got += len;
        STORE(&r->head, mkpos(POS(h) + rec, CNT(h)), release);
        wake_producers(r, 0);
        if (!(flags & REC_MORE))
            break;
    }
    op->locked = 0;
    lock_release(&r->get_lock);
    op->lens[0] = op->total;
    op->n = 1;
    if (has_data(r, 0))
        wake_consumers(r, 1);
    return CMP_OK;
}

void
cmp_ring_take_abandon(cmp_ring *r, cmp_ring_rop *op)
{
    /* The rest of the message is skipped by the next consumer. */
    if (op->locked) {
        op->locked = 0;
        lock_release(&r->get_lock);
    }
    if (has_data(r, 0))
        wake_consumers(r, 1);
}

/* ------------------------------------------------------------------------ */
/* JoinableQueue                                                            */

int
cmp_ring_task_done(cmp_ring *r)
{
    uint32_t v = LOAD(&r->unfinished, relaxed);
    do {
        if (v == 0)
            return CMP_EEMPTY;
    } while (!atomic_compare_exchange_weak_explicit(&r->unfinished, &v, v - 1, memory_order_seq_cst,
                                                    memory_order_relaxed));
    if (v == 1)
        wake_joiners(r);
    return CMP_OK;
}

int
cmp_ring_join(cmp_ring *r, int64_t deadline)
{
    for (;;) {
        uint32_t v = LOAD(&r->unfinished, seq_cst);
        if (v == 0)
            return CMP_OK;
        atomic_fetch_add_explicit(&r->join_waiters, 1, memory_order_seq_cst);
        v = LOAD(&r->unfinished, seq_cst);
        int st = v == 0 ? CMP_OK : cmp_futex_wait(&r->unfinished, v, CMP_FUTEX_ANY, deadline);
        atomic_fetch_sub_explicit(&r->join_waiters, 1, memory_order_relaxed);
        if (st != CMP_OK && LOAD(&r->unfinished, seq_cst) != 0)
            return st;
    }
}
