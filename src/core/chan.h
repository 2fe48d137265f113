/* The shared-memory transport of Pipe(): rings for the messages, a
 * descriptor for everything the kernel must know.
 *
 * A channel is one shared segment: a header page, then one ring (simplex:
 * end 1 writes, end 0 reads) or two (duplex: ring k carries messages to end
 * k). The pair of descriptors the stdlib's Pipe() would have -- a Unix
 * SOCK_SEQPACKET socketpair, or a pipe -- stays: it is what fileno() returns,
 * what select() and wait() watch, and how each side learns that the other
 * has gone (end of file, EPIPE). Messages never touch it; it carries only
 *
 *  - bells: one-byte records that make the reader's descriptor readable.
 *    bell[k] (bit 0: a bell is in ring k's reader's descriptor, or on its
 *    way; the rest: a sequence number) obeys "a message in ring k implies a
 *    bell": a producer, after publishing, bumps the word and rings only if
 *    bit 0 was clear; a consumer clears bit 0 (and takes one bell) only with
 *    a compare-and-swap made after it saw the ring empty, so a producer that
 *    published in between makes the swap fail. A consumer that keeps up
 *    never clears, so a stream of messages costs no system call at all.
 *  - descriptor records (sockets only): a message that passes descriptors
 *    (a Connection sent to a running process) puts them, with SCM_RIGHTS,
 *    in a record sent while the producer holds the ring's put lock, and
 *    marks its ring record; the consumer that takes it reads them next.
 *
 * Liveness: a waiting consumer sleeps in poll() on its descriptor, so the
 * last close of the other end wakes it with end of file; a producer asks the
 * kernel (POLLHUP / POLLERR) whether the reader is still there. */
#ifndef CMP_CHAN_H
#define CMP_CHAN_H

#include "cmp_core.h"
#include "ring.h"
#include "spin.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CMP_CHAN_CAPACITY ((size_t)256 * 1024) /* bytes per ring: what a socket buffers */

typedef struct cmp_chan_hdr cmp_chan_hdr;

/* A channel as mapped in this process. */
typedef struct {
    cmp_chan_hdr *hdr;
    cmp_ring *ring[2];
    int nrings;
} cmp_chan;

size_t cmp_chan_size(int nrings, size_t capacity);
/* Lay out a channel in zeroed memory of cmp_chan_size() bytes. */
int cmp_chan_init(void *mem, int nrings, size_t capacity, cmp_chan *out);
/* Check and view a channel mapped from another process: CMP_OK or
 * CMP_ERRNO (EINVAL). */
int cmp_chan_open(void *mem, size_t size, cmp_chan *out);

/* A channel's segment as mapped in this process, with its memfd: shared by
 * the ends that use it here (refs; the caller serializes them), unmapped
 * and closed with the last reference. */
typedef struct {
    long refs;
    void *base;
    size_t size;
    int memfd;
    cmp_chan c;
} cmp_chan_seg;

/* A new channel of nrings rings of CMP_CHAN_CAPACITY bytes, in a memfd of
 * its own. A channel costs a third descriptor, so one is made only while
 * descriptors are plentiful (the memfd is in the first quarter of the
 * limit): CMP_OK, CMP_EFULL (they are not: make none), or CMP_ERRNO. */
int cmp_chan_create(int nrings, cmp_chan_seg **out);

/* Map and check a channel made by another process, for the end that reads
 * ring `end` (a simplex channel's reader is end 0, `reads` says whether
 * this end reads). memfd is taken over on success only. CMP_OK or
 * CMP_ERRNO (EINVAL: not such a channel). */
int cmp_chan_attach(int memfd, size_t size, int end, int reads, cmp_chan_seg **out);

cmp_chan_seg *cmp_chan_hold(cmp_chan_seg *seg);
void cmp_chan_release(cmp_chan_seg *seg);

/* The descriptors of a channel's two ends, close-on-exec: a SOCK_SEQPACKET
 * socketpair (duplex) or a non-blocking pipe. CMP_OK or CMP_ERRNO. */
int cmp_chan_pair(int duplex, int fds[2]);

/* Counts closes of either end in any process that closed one explicitly;
 * a producer that sees it change asks the kernel about its peer again. */
uint32_t cmp_chan_closes(const cmp_chan *c);
void cmp_chan_note_close(cmp_chan *c);

/* Producer, after its message's first record is in ring k: ring the bell if
 * needed, on fd (the producer's own descriptor). CMP_OK, or CMP_ERRNO
 * (EPIPE: the reader is gone). */
int cmp_chan_notify(cmp_chan *c, int k, int fd, int is_socket);

/* Whether the reader of the producer's descriptor is gone (one poll()). */
int cmp_chan_peer_gone(int fd);

/* What cmp_chan_ready() finds. */
enum {
    CMP_CHAN_QUIET = 0,     /* nothing yet; bit 0 of the bell is clear, so the next message rings */
    CMP_CHAN_MESSAGE = 1,   /* a message is in the ring */
    CMP_CHAN_FDS_AHEAD = 2, /* a descriptor record came ahead of its message */
    CMP_CHAN_GONE = 3,      /* no message, and the other end is gone for good */
    CMP_CHAN_STRAY_BYTE = 4, /* no message, and a byte written to the descriptor directly */
};

/* Consumer of ring k, on its descriptor fd: one of the above. Never blocks. */
int cmp_chan_ready(cmp_chan *c, int k, int fd, int is_socket);

/* Consumer: wait until a message is in ring k (CMP_OK), the other end is
 * gone (CMP_EEOF) or the deadline passes (CMP_ETIMEDOUT); or CMP_EINTR,
 * CMP_ERRNO (EPROTO: a byte outside the protocol is on the descriptor).
 * Spins first (spin.h), on shared memory only. */
int cmp_chan_wait(cmp_chan *c, int k, int fd, int is_socket, int64_t deadline,
                  cmp_spin_budget *spin);

/* Consumer, when the ring is empty after a receive and its descriptor may
 * be watched by someone else's select(): take back our bell, so the
 * descriptor is readable exactly when there is a message. */
void cmp_chan_quiesce(cmp_chan *c, int k, int fd, int is_socket);

/* The descriptor record of a marked message: send (producer, holding the
 * put lock; up to CMP_WIRE_MAX_FDS) and receive (consumer, after taking the
 * message; *nfds in: room, out: count). CMP_OK or CMP_ERRNO. */
int cmp_chan_send_fds(int fd, const int *fds, int nfds);
int cmp_chan_recv_fds(int fd, int *fds, int *nfds);

#endif /* CMP_CHAN_H */
