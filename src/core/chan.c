/* The shared-memory transport of Pipe() (see chan.h). */
#include "chan.h"
#include "futex.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHAN_MAGIC 0x316e616863706d63ULL /* "cmpchan1" */
#define CHAN_HEADER ((size_t)4096)
#define TAG_BELL 'b'
#define TAG_FDS 'f'

#define BELL_LATE_NS 50000 /* how long a consumer waits for a bell in flight */

/* A receiver spins as a futex waiter does (sync.c): about a sleep and a
 * wake-up at most, looking at the ring only (no system call). */
static const cmp_spin_policy chan_spin = {20000, 1000, 1};

struct cmp_chan_hdr {
    uint64_t magic;
    uint64_t capacity;
    uint32_t nrings;
    char pad0[64 - 20];
    struct {
        _Atomic uint64_t word;
        char pad[56];
    } bell[2];
    _Atomic uint32_t closes;
};

_Static_assert(sizeof(struct cmp_chan_hdr) <= CHAN_HEADER, "channel header too large");

size_t
cmp_chan_size(int nrings, size_t capacity)
{
    return CHAN_HEADER + (size_t)nrings * cmp_ring_segment_size(capacity);
}

static void
view(void *mem, int nrings, size_t capacity, cmp_chan *out)
{
    out->hdr = mem;
    out->nrings = nrings;
    out->ring[0] = out->ring[1] = NULL;
    for (int k = 0; k < nrings; k++)
        out->ring[k] = (cmp_ring *)((char *)mem + CHAN_HEADER
                                    + (size_t)k * cmp_ring_segment_size(capacity));
}

int
cmp_chan_init(void *mem, int nrings, size_t capacity, cmp_chan *out)
{
    if (nrings < 1 || nrings > 2) {
        errno = EINVAL;
        return CMP_ERRNO;
    }
    cmp_chan_hdr *h = mem;
    h->magic = CHAN_MAGIC;
    h->capacity = capacity;
    h->nrings = (uint32_t)nrings;
    view(mem, nrings, capacity, out);
    for (int k = 0; k < nrings; k++) {
        int st = cmp_ring_init(out->ring[k], capacity, 0, 0);
        if (st != CMP_OK)
            return st;
    }
    return CMP_OK;
}

int
cmp_chan_open(void *mem, size_t size, cmp_chan *out)
{
    cmp_chan_hdr *h = mem;
    if (size < CHAN_HEADER || h->magic != CHAN_MAGIC || h->nrings < 1 || h->nrings > 2
        || h->capacity < CMP_RING_MIN_CAPACITY || h->capacity > CMP_RING_MAX_CAPACITY
        || cmp_chan_size((int)h->nrings, h->capacity) != size) {
        errno = EINVAL;
        return CMP_ERRNO;
    }
    view(mem, (int)h->nrings, h->capacity, out);
    size_t ring_size = cmp_ring_segment_size(h->capacity);
    for (int k = 0; k < out->nrings; k++) {
        if (cmp_ring_check(out->ring[k], ring_size) != CMP_OK)
            return CMP_ERRNO;
    }
    return CMP_OK;
}

uint32_t
cmp_chan_closes(const cmp_chan *c)
{
    return atomic_load_explicit(&c->hdr->closes, memory_order_acquire);
}

void
cmp_chan_note_close(cmp_chan *c)
{
    atomic_fetch_add_explicit(&c->hdr->closes, 1, memory_order_release);
}

/* ------------------------------------------------------------------------ */
/* Bells                                                                    */

static ssize_t
put_byte(int fd, int is_socket, char tag)
{
    ssize_t n;
    do {
        n = is_socket ? send(fd, &tag, 1, MSG_NOSIGNAL | MSG_DONTWAIT) : write(fd, &tag, 1);
    } while (n < 0 && errno == EINTR);
    return n;
}

int
cmp_chan_notify(cmp_chan *c, int k, int fd, int is_socket)
{
    _Atomic uint64_t *bell = &c->hdr->bell[k].word;
    /* The message is published; now the bell (a full fence between the two:
     * see the consumer's side in ready()). */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t w = atomic_load_explicit(bell, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(bell, &w, (w + 2) | 1, memory_order_seq_cst,
                                                  memory_order_relaxed))
        ;
    if (w & 1)
        return CMP_OK; /* rung already, and not yet answered */
    if (put_byte(fd, is_socket, TAG_BELL) == 1 || errno == EAGAIN)
        return CMP_OK; /* (a full socket of bells is readable anyway) */
    return CMP_ERRNO;
}

int
cmp_chan_peer_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = 0};
    int r;
    do {
        r = poll(&p, 1, 0);
    } while (r < 0 && errno == EINTR);
    return r > 0 && (p.revents & (POLLHUP | POLLERR)) != 0;
}

#define PEEK_EOF 256

/* The first record (or byte) waiting on fd, without taking it: its tag,
 * PEEK_EOF at end of file, -1 if none. For a pipe, which cannot be peeked, a
 * byte is taken: only bells travel there. */
static int
peek(int fd, int is_socket)
{
    char tag;
    ssize_t n;
    do {
        n = is_socket ? recv(fd, &tag, 1, MSG_PEEK | MSG_DONTWAIT) : read(fd, &tag, 1);
    } while (n < 0 && errno == EINTR);
    if (n == 1)
        return (unsigned char)tag;
    return n == 0 ? PEEK_EOF : -1;
}

static void
drop_record(int fd)
{
    char tag;
    ssize_t n;
    do {
        n = recv(fd, &tag, 1, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
}

/* Take the bell whose bit we just cleared. Its producer may still be on its
 * way to sending it: wait briefly, then give up (a bell that comes later is
 * only a spurious wake-up). */
static void
take_bell(int fd, int is_socket)
{
    int64_t end = 0;
    for (;;) {
        int tag = peek(fd, is_socket);
        if (tag == TAG_BELL) {
            if (is_socket)
                drop_record(fd);
            return;
        }
        if (tag >= 0)
            return; /* end of file, or descriptors ahead of it */
        int64_t now = cmp_monotonic_ns();
        if (end == 0)
            end = now + BELL_LATE_NS;
        else if (now >= end)
            return;
        cmp_cpu_relax();
    }
}

int
cmp_chan_ready(cmp_chan *c, int k, int fd, int is_socket)
{
    _Atomic uint64_t *bell = &c->hdr->bell[k].word;
    for (;;) {
        uint64_t w = atomic_load_explicit(bell, memory_order_seq_cst);
        if (!cmp_ring_empty(c->ring[k]))
            return CMP_CHAN_MESSAGE;
        if (w & 1) {
            /* Seen empty after w: if no producer bumped the word since, none
             * published unseen, and from now on they ring. */
            if (atomic_compare_exchange_strong_explicit(bell, &w, w & ~(uint64_t)1,
                                                        memory_order_seq_cst, memory_order_relaxed))
                take_bell(fd, is_socket);
            continue;
        }
        /* Quiet: anything on the descriptor is a stale bell, a descriptor
         * record for a message on its way, or the end. */
        int tag = peek(fd, is_socket);
        if (tag == PEEK_EOF)
            return cmp_ring_empty(c->ring[k]) ? CMP_CHAN_GONE : CMP_CHAN_MESSAGE;
        if (tag == TAG_BELL) {
            if (is_socket)
                drop_record(fd);
            continue;
        }
        if (tag == TAG_FDS)
            return cmp_ring_empty(c->ring[k]) ? CMP_CHAN_FDS_AHEAD : CMP_CHAN_MESSAGE;
        if (tag >= 0) /* a byte someone wrote to the descriptor itself */
            return cmp_ring_empty(c->ring[k]) ? CMP_CHAN_STRAY_BYTE : CMP_CHAN_MESSAGE;
        return CMP_CHAN_QUIET;
    }
}

void
cmp_chan_quiesce(cmp_chan *c, int k, int fd, int is_socket)
{
    (void)cmp_chan_ready(c, k, fd, is_socket);
}

static int
ring_ready(void *r)
{
    return !cmp_ring_empty(r);
}

int
cmp_chan_wait(cmp_chan *c, int k, int fd, int is_socket, int64_t deadline, cmp_spin_budget *spin)
{
    cmp_ring *r = c->ring[k];
    int64_t start;
    if (cmp_spin(&chan_spin, spin, ring_ready, r, deadline, &start))
        return CMP_OK;
    int64_t orphan_after = 0;
    for (;;) {
        int ready = cmp_chan_ready(c, k, fd, is_socket);
        if (ready == CMP_CHAN_MESSAGE) {
            cmp_spin_settle(&chan_spin, spin, start);
            return CMP_OK;
        }
        if (ready == CMP_CHAN_GONE)
            return CMP_EEOF;
        if (ready == CMP_CHAN_STRAY_BYTE) {
            errno = EPROTO;
            return CMP_ERRNO;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int st;
        if (ready == CMP_CHAN_FDS_AHEAD) {
            /* A producer is between its descriptor record and its message
             * -- or gave the message up (interrupted) after sending the
             * record: once that has lasted a second with nobody writing,
             * the record is an orphan, and goes. */
            int64_t now = cmp_monotonic_ns();
            if (orphan_after == 0) {
                orphan_after = now + 1000000000LL;
            }
            else if (now >= orphan_after && !cmp_ring_put_busy(c->ring[k])
                     && cmp_ring_empty(c->ring[k])) {
                int fds[CMP_WIRE_MAX_FDS], n = CMP_WIRE_MAX_FDS;
                if (cmp_chan_recv_fds(fd, fds, &n) == CMP_OK) {
                    for (int i = 0; i < n; i++)
                        close(fds[i]);
                }
                orphan_after = 0;
                continue;
            }
            int64_t soon = now + 1000000;
            st = cmp_wire_poll(NULL, 0, soon < deadline ? soon : deadline);
            if (st == CMP_ETIMEDOUT && soon < deadline)
                continue;
        }
        else {
            st = cmp_wire_poll(&p, 1, deadline);
            if (st > 0 && (p.revents & POLLNVAL)) {
                errno = EBADF; /* closed under us by another thread */
                return CMP_ERRNO;
            }
        }
        if (st < 0)
            return st;
    }
}

/* ------------------------------------------------------------------------ */
/* Descriptor records                                                       */

int
cmp_chan_send_fds(int fd, const int *fds, int nfds)
{
    if (nfds < 1 || nfds > CMP_WIRE_MAX_FDS) {
        errno = EINVAL;
        return CMP_ERRNO;
    }
    char tag = TAG_FDS;
    struct iovec iov = {&tag, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    cmp_cmsg_space cmsg;
    cmp_wire_put_fds(&m, &cmsg, fds, nfds);
    ssize_t n;
    do {
        n = sendmsg(fd, &m, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n == 1 ? CMP_OK : CMP_ERRNO;
}

int
cmp_chan_recv_fds(int fd, int *fds, int *nfds)
{
    int room = *nfds;
    int64_t deadline = cmp_monotonic_ns() + 5 * 1000000000LL;
    for (;;) {
        char tag;
        struct iovec iov = {&tag, 1};
        cmp_cmsg_space cmsg;
        struct msghdr m = {.msg_iov = &iov,
                           .msg_iovlen = 1,
                           .msg_control = cmsg.buf,
                           .msg_controllen = sizeof(cmsg.buf)};
        *nfds = 0;
        ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            /* Sent before the message was published: it is there, or as
             * good as. Wait a little, never forever. */
            struct pollfd p = {.fd = fd, .events = POLLIN};
            int st = cmp_wire_poll(&p, 1, deadline);
            if (st == CMP_ETIMEDOUT) {
                errno = EPROTO;
                return CMP_ERRNO;
            }
            if (st < 0 && st != CMP_EINTR)
                return st;
            continue;
        }
        if (n < 0)
            return CMP_ERRNO;
        if (n == 0) {
            errno = EPROTO;
            return CMP_ERRNO;
        }
        cmp_wire_take_fds(&m, fds, nfds, room);
        if (tag == TAG_FDS)
            return CMP_OK;
        for (int i = 0; i < *nfds; i++) /* a bell never carries any */
            close(fds[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* Segments                                                                 */

static cmp_chan_seg *
seg_map(int memfd, size_t size)
{
    cmp_chan_seg *seg = calloc(1, sizeof(*seg));
    if (seg == NULL)
        return NULL;
    seg->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (seg->base == MAP_FAILED) {
        free(seg);
        return NULL;
    }
    seg->size = size;
    seg->memfd = memfd;
    seg->refs = 1;
    return seg;
}

static void
seg_unmap(cmp_chan_seg *seg)
{
    int saved = errno;
    munmap(seg->base, seg->size);
    free(seg);
    errno = saved;
}

int
cmp_chan_create(int nrings, cmp_chan_seg **out)
{
    size_t size = cmp_chan_size(nrings, CMP_CHAN_CAPACITY);
    int memfd = memfd_create("cmp-pipe", MFD_CLOEXEC);
    if (memfd < 0)
        return CMP_ERRNO;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
        && (rlim_t)memfd >= rl.rlim_cur / 4) {
        close(memfd);
        return CMP_EFULL;
    }
    cmp_chan_seg *seg = NULL;
    if (ftruncate(memfd, (off_t)size) < 0 || (seg = seg_map(memfd, size)) == NULL) {
        int saved = errno;
        close(memfd);
        errno = saved;
        return CMP_ERRNO;
    }
    if (cmp_chan_init(seg->base, nrings, CMP_CHAN_CAPACITY, &seg->c) != CMP_OK) {
        cmp_chan_release(seg);
        return CMP_ERRNO;
    }
    *out = seg;
    return CMP_OK;
}

int
cmp_chan_attach(int memfd, size_t size, int end, int reads, cmp_chan_seg **out)
{
    if (size == 0 || end < 0 || end > 1) {
        errno = EINVAL;
        return CMP_ERRNO;
    }
    cmp_chan_seg *seg = seg_map(memfd, size);
    if (seg == NULL)
        return CMP_ERRNO;
    if (cmp_chan_open(seg->base, seg->size, &seg->c) != CMP_OK
        || (seg->c.nrings == 1 && (end == 0) != (reads != 0))) {
        seg_unmap(seg); /* the caller still owns memfd */
        errno = EINVAL;
        return CMP_ERRNO;
    }
    *out = seg;
    return CMP_OK;
}

cmp_chan_seg *
cmp_chan_hold(cmp_chan_seg *seg)
{
    seg->refs++;
    return seg;
}

void
cmp_chan_release(cmp_chan_seg *seg)
{
    if (--seg->refs > 0)
        return;
    int memfd = seg->memfd;
    seg_unmap(seg);
    close(memfd);
}

int
cmp_chan_pair(int duplex, int fds[2])
{
    int ok = duplex ? socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) == 0
                    : pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0;
    if (!ok) {
        fds[0] = fds[1] = -1;
        return CMP_ERRNO;
    }
    return CMP_OK;
}
