/* A multi-producer multi-consumer ring of messages in one shared segment.
 *
 * The segment is a header (counters, two locks, futex words) followed by a
 * power-of-two byte ring. A message is one record -- an 8-byte header
 * {length, flags} and the payload, padded to 8 bytes -- or, when it is larger
 * than half the ring, a run of chunk records that the producer streams in as
 * consumers make room.
 *
 * Positions. `tail` (advanced by producers under the put lock) and `head`
 * (advanced by consumers under the get lock) pack a byte position (low 40
 * bits) and a message count (high 24 bits) in one 64-bit word, so each
 * publish or consume is a single store: a process killed anywhere leaves them
 * consistent. The number of messages in the ring is the difference of the
 * counts; `reserved` counts messages accepted by put() but still waiting in
 * some process's overflow (see cmp_ring_offer), and maxsize bounds the sum.
 *
 * Locks. Each lock word holds its holder's pid (bit 31: waiters). A waiter
 * that has slept CMP_RING_PROBE_NS checks, with a pidfd, whether the holder
 * is still alive, and takes the lock over from a dead one. Locks are held
 * only while copying, except by a producer streaming a large message, which
 * holds the put lock until its last chunk is in.
 *
 * What a killed process leaves behind:
 *  - killed in put() before its record was published: the item is lost (it
 *    never was in the queue); after: it is in the queue.
 *  - killed while streaming a large message: the message is lost; the next
 *    producer appends an "abort" record and consumers discard the part they
 *    have.
 *  - killed in get() before the head moved: the item stays in the queue for
 *    the others; after: it is lost with the process. A consumer killed in
 *    the middle of a large message loses it; the next consumer skips the
 *    rest of its chunks.
 *  - killed with items in its overflow (not yet in the ring): those items
 *    are lost and their slots stay counted in `reserved` (as the stdlib's
 *    semaphore stays decremented).
 *
 * Waits: consumers wait for data without the get lock, producers wait for a
 * slot without the put lock; both spin briefly, then sleep on a futex
 * sequence word that the other side bumps (only when someone sleeps). */
#ifndef CMP_RING_H
#define CMP_RING_H

#include "cmp_core.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define CMP_RING_MIN_CAPACITY ((size_t)4096)
#define CMP_RING_MAX_CAPACITY ((size_t)1 << 27)
#define CMP_RING_HEADER ((size_t)512)       /* bytes before the data */
#define CMP_RING_PROBE_NS (200 * 1000000LL) /* check a lock holder's liveness */

/* cmp_ring_init flags */
#define CMP_RING_JOINABLE 1u

typedef struct cmp_ring cmp_ring;

/* Bytes of shared memory for a ring of `capacity` bytes (a power of two
 * between the MIN and MAX capacity). */
size_t cmp_ring_segment_size(size_t capacity);

/* Lay out a ring in zeroed memory of cmp_ring_segment_size(capacity) bytes.
 * maxsize 0: unbounded. CMP_OK, or CMP_ERRNO (EINVAL). */
int cmp_ring_init(void *mem, size_t capacity, uint32_t maxsize, uint32_t flags);

/* Check a ring mapped from another process; CMP_OK or CMP_ERRNO (EINVAL). */
int cmp_ring_check(const void *mem, size_t size);

size_t cmp_ring_capacity(const cmp_ring *r);
uint32_t cmp_ring_maxsize(const cmp_ring *r);
uint32_t cmp_ring_flags(const cmp_ring *r);
/* Messages accepted and not yet taken: in the ring, or reserved. */
uint64_t cmp_ring_qsize(const cmp_ring *r);
int cmp_ring_full(const cmp_ring *r);
/* No record in the ring (a snapshot, with acquire ordering). */
int cmp_ring_empty(const cmp_ring *r);
/* A producer holds the put lock (a snapshot, with acquire ordering). */
int cmp_ring_put_busy(const cmp_ring *r);

/* ------------------------------------------------------------------------ */
/* Producers                                                                */

/* A message given as pieces (the pickler's output, unjoined). */
typedef struct {
    const struct iovec *iov;
    int niov;
    size_t len; /* sum of the pieces */
} cmp_ring_msg;

/* offer flags.
 * CMP_RING_WAIT_LOCK: wait for the put lock (bounded: until the deadline;
 *   unbounded: LOCK_PATIENCE, then defer); else only spin for it briefly.
 * CMP_RING_TRY: never sleep: CMP_EFULL if it would have to (for a slot or
 *   for the lock). */
#define CMP_RING_WAIT_LOCK 1
#define CMP_RING_TRY 2
#define CMP_RING_LOCK_PATIENCE_NS (2 * 1000000LL)

/* Accept `count` messages for the queue, in order; *accepted of them were
 * (a prefix). Waits until `deadline` for each slot when the queue is
 * bounded. An accepted message goes into the ring if it fits there now;
 * once one does not (or the put lock is busy, or `defer_all`), it and the
 * rest are accepted as reserved: the caller writes them later, in order,
 * with cmp_ring_write(reserved=1). *written counts those in the ring (a
 * prefix of the accepted). Returns CMP_OK (all accepted), CMP_EFULL (no
 * slot before the deadline), CMP_EINTR, or CMP_ERRNO. */
int cmp_ring_offer(cmp_ring *r, const cmp_ring_msg *msgs, size_t count, int defer_all,
                   int64_t deadline, int flags, size_t *accepted, size_t *written);

/* State of one blocking write, kept across CMP_EINTR returns. */
typedef struct {
    cmp_ring_msg msg;
    int reserved; /* in: the message holds a reserved slot */
    /* Optional, for cmp.connection's transport (cmp_ring_wop_init leaves
     * them off): */
    int64_t deadline; /* give up waiting then: CMP_ETIMEDOUT (resumable) */
    int mark;         /* the taker sees it in cmp_ring_rop.mark */
    /* once, holding the put lock, before any record: non-CMP_OK aborts the write */
    int (*on_lock)(void *arg);
    /* once, when the message's first record is in the ring */
    void (*on_publish)(void *arg);
    void *arg;
    /* private */
    int hooked;
    int locked, streaming;
    size_t done, piece, piece_off;
} cmp_ring_wop;

void cmp_ring_wop_init(cmp_ring_wop *op, const cmp_ring_msg *msg, int reserved);

/* Write one message, waiting (until op->deadline) for room; messages larger
 * than half the ring stream through it. CMP_OK, CMP_EINTR or CMP_ETIMEDOUT
 * (call again with the same op to resume, or cmp_ring_write_abandon), the
 * on_lock hook's status, or CMP_ERRNO. */
int cmp_ring_write(cmp_ring *r, cmp_ring_wop *op);
void cmp_ring_write_abandon(cmp_ring *r, cmp_ring_wop *op);

/* Take a slot for a message that will be written later with
 * cmp_ring_write(reserved=1); bounded queues wait until the deadline.
 * CMP_OK, CMP_EFULL, CMP_EINTR or CMP_ERRNO. */
int cmp_ring_reserve(cmp_ring *r, int64_t deadline);

/* Give back n reserved slots whose messages will never be written. */
void cmp_ring_unreserve(cmp_ring *r, size_t n);

/* ------------------------------------------------------------------------ */
/* Consumers                                                                */

typedef struct {
    unsigned char *buf; /* in: where messages are copied */
    size_t cap;
    size_t max_items;        /* in: at most this many (>= 1) */
    size_t *lens;            /* in: room for max_items lengths */
    size_t n;                /* out: messages taken, back to back in buf */
    int mark;                /* out: the first message's wop.mark */
    size_t need;             /* out with CMP_NEED: buffer size needed */
    _Atomic uint64_t *claim; /* in, optional (set after rop_init): see below */
    /* in, optional: the deadline for the rest of a streamed message once its
     * first chunk is taken; 0 (rop_init): take's deadline */
    int64_t stream_deadline;
    /* private */
    int locked;
    size_t total, got;
} cmp_ring_rop;

void cmp_ring_rop_init(cmp_ring_rop *op, unsigned char *buf, size_t cap, size_t *lens,
                       size_t max_items);

/* Take 1..max_items messages, waiting until `deadline` for the first (and,
 * for a streamed message, for each of its chunks: see stream_deadline).
 * With deadline CMP_RING_NOW it never sleeps, in any phase. CMP_OK,
 * CMP_EEMPTY (none by the deadline), CMP_NEED (the next message needs
 * op->need bytes of buffer: nothing was taken), CMP_ETIMEDOUT (a streamed
 * message is partly received and its next chunk did not come by the
 * deadline) or CMP_EINTR: call again with the same op (and buffer) to
 * resume, or cmp_ring_take_abandon, which loses a message partly received
 * (op->locked: one is); CMP_ERRNO. Until then this process holds the get
 * lock: other consumers wait. */
#define CMP_RING_NOW 0
int cmp_ring_take(cmp_ring *r, cmp_ring_rop *op, int64_t deadline);

/* Claims (for cmp.pool's workers). When op->claim is set and the first
 * message taken is at least CMP_RING_CLAIM_WORDS 8-byte words long, its
 * first words are stored in claim[0..] -- claim[0] last, with release --
 * while the get lock is held and before the message leaves the ring. A
 * process that reads claim[0] after the taker died sees an older claim only
 * if the message is still in the ring: no message leaves the ring unclaimed.
 * (The converse does not hold: a taker killed between the two stores leaves
 * a claim on a message that another consumer will take.) */
#define CMP_RING_CLAIM_WORDS 3
void cmp_ring_take_abandon(cmp_ring *r, cmp_ring_rop *op);

/* ------------------------------------------------------------------------ */
/* JoinableQueue                                                            */

/* One task done: CMP_OK, or CMP_EEMPTY when none is unfinished. */
int cmp_ring_task_done(cmp_ring *r);
/* Wait until every task is done: CMP_OK, CMP_EINTR or CMP_ERRNO. */
int cmp_ring_join(cmp_ring *r, int64_t deadline);
uint32_t cmp_ring_unfinished(const cmp_ring *r);

#endif /* CMP_RING_H */
