/* Framed messages over file descriptors: see wire.h. */
#include "wire.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* A descriptor the caller made non-blocking answers EAGAIN: wait for it
 * instead of failing. CMP_OK to retry, CMP_EINTR, CMP_ERRNO. */
static int
wait_ready(int fd, short events)
{
    struct pollfd p = {.fd = fd, .events = events};
    if (poll(&p, 1, -1) >= 0)
        return CMP_OK;
    return errno == EINTR ? CMP_EINTR : CMP_ERRNO;
}

static int
io_error(int fd, short events)
{
    if (errno == EINTR)
        return CMP_EINTR;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return wait_ready(fd, events);
    return CMP_ERRNO;
}

int
cmp_wire_fd_kind(int fd)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISSOCK(sb.st_mode))
        return CMP_WIRE_PIPE;
    int domain;
    socklen_t len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_UNIX)
        return CMP_WIRE_UNIX;
    return CMP_WIRE_SOCKET;
}

int
cmp_wire_dup(int fd)
{
    return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

int
cmp_wire_close(int fd)
{
    if (close(fd) < 0 && errno != EINTR)
        return CMP_ERRNO;
    return CMP_OK;
}

size_t
cmp_wire_header(uint64_t len, unsigned char out[CMP_WIRE_HEADER_MAX])
{
    if (len < CMP_WIRE_SHORT_MAX) {
        for (int i = 0; i < 4; i++)
            out[i] = (unsigned char)(len >> (24 - 8 * i));
        return 4;
    }
    memset(out, 0xff, 4);
    for (int i = 0; i < 8; i++)
        out[4 + i] = (unsigned char)(len >> (56 - 8 * i));
    return 12;
}

/* ------------------------------------------------------------------------ */
/* Sending                                                                  */

/* Drop `n` written bytes from the front of tx->iov. */
static void
tx_advance(cmp_wire_tx *tx, size_t n)
{
    tx->sent += n;
    while (tx->iovcnt > 0 && n >= tx->iov[0].iov_len) {
        n -= tx->iov[0].iov_len;
        tx->iov++;
        tx->iovcnt--;
    }
    if (n > 0) {
        tx->iov[0].iov_base = (char *)tx->iov[0].iov_base + n;
        tx->iov[0].iov_len -= n;
    }
}

int
cmp_wire_send(int fd, cmp_wire_tx *tx)
{
    tx_advance(tx, 0); /* skip leading empty pieces */
    while (tx->iovcnt > 0) {
        int cnt = tx->iovcnt > IOV_MAX ? IOV_MAX : tx->iovcnt;
        ssize_t n;
        if (tx->is_socket) {
            struct msghdr m = {.msg_iov = tx->iov, .msg_iovlen = (size_t)cnt};
            cmp_cmsg_space cmsg;
            if (tx->nfds > 0)
                cmp_wire_put_fds(&m, &cmsg, tx->fds, tx->nfds);
            n = sendmsg(fd, &m, MSG_NOSIGNAL);
        }
        else {
            n = writev(fd, tx->iov, cnt);
        }
        if (n < 0) {
            int st = io_error(fd, POLLOUT);
            if (st != CMP_OK)
                return st;
            continue;
        }
        if (n > 0) {
            tx->fds = NULL; /* they went with the first byte */
            tx->nfds = 0;
        }
        tx_advance(tx, (size_t)n);
        /* A short write may hide a signal (the call returns what it wrote
         * instead of EINTR): let the caller run handlers before blocking
         * again. */
        if (tx->iovcnt > 0)
            return CMP_EINTR;
    }
    return CMP_OK;
}

/* ------------------------------------------------------------------------ */
/* Receiving                                                                */

void
cmp_wire_rx_reset(cmp_wire_rx *rx)
{
    rx->hdr_have = 0;
    rx->hdr_need = 4;
    rx->header_done = 0;
    rx->len = 0;
    rx->body = NULL;
    rx->body_have = 0;
    rx->nfds = 0;
}

int
cmp_wire_rx_started(const cmp_wire_rx *rx)
{
    return rx->hdr_have > 0;
}

int
cmp_wire_rx_eof_inside(const cmp_wire_rx *rx)
{
    if (!rx->header_done)
        return rx->hdr_have != 0 && rx->hdr_have != 4; /* 4: the marker, whole */
    return rx->body_have != 0;
}

void
cmp_wire_put_fds(struct msghdr *m, cmp_cmsg_space *space, const int *fds, int nfds)
{
    CMP_ASSERT(nfds > 0 && nfds <= CMP_WIRE_MAX_FDS);
    size_t size = sizeof(int) * (size_t)nfds;
    memset(space, 0, sizeof(*space));
    m->msg_control = space->buf;
    m->msg_controllen = CMSG_SPACE(size);
    struct cmsghdr *c = CMSG_FIRSTHDR(m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(size);
    memcpy(CMSG_DATA(c), fds, size);
}

void
cmp_wire_take_fds(struct msghdr *m, int *fds, int *nfds, int room)
{
    if (m->msg_controllen == 0)
        return;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) {
            int received;
            memcpy(&received, data + i * sizeof(int), sizeof(int));
            if (*nfds < room)
                fds[(*nfds)++] = received;
            else
                close(received);
        }
    }
}

/* Read what comes of the header's missing bytes, keeping the descriptors
 * that come with them: the bytes read, 0 at end of file, -1 (errno). */
static ssize_t
read_header_bytes(int fd, int is_socket, cmp_wire_rx *rx, int flags)
{
    void *dst = rx->hdr + rx->hdr_have;
    size_t want = rx->hdr_need - rx->hdr_have;
    if (!is_socket)
        return read(fd, dst, want);
    struct iovec iov = {.iov_base = dst, .iov_len = want};
    cmp_cmsg_space cmsg;
    struct msghdr m = {.msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = cmsg.buf,
                       .msg_controllen = sizeof(cmsg.buf)};
    ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | flags);
    if (n >= 0)
        cmp_wire_take_fds(&m, rx->fds, &rx->nfds, CMP_WIRE_MAX_FDS);
    return n;
}

static uint64_t
big_endian(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

int
cmp_wire_recv_header(int fd, int is_socket, cmp_wire_rx *rx)
{
    while (!rx->header_done) {
        if (rx->hdr_have < rx->hdr_need) {
            ssize_t n = read_header_bytes(fd, is_socket, rx, 0);
            if (n < 0) {
                int st = io_error(fd, POLLIN);
                if (st != CMP_OK)
                    return st;
                continue;
            }
            if (n == 0)
                return CMP_EEOF;
            rx->hdr_have += (uint32_t)n;
            if (rx->hdr_have < rx->hdr_need)
                return CMP_EINTR; /* a short read may hide a signal, as above */
        }
        if (rx->hdr_need == 4) {
            int32_t v = (int32_t)(uint32_t)big_endian(rx->hdr, 4);
            if (v == -1) {
                rx->hdr_need = 12;
                continue;
            }
            if (v < 0)
                return CMP_EBADMSG;
            rx->len = (uint64_t)v;
        }
        else {
            rx->len = big_endian(rx->hdr + 4, 8);
        }
        rx->header_done = 1;
    }
    return CMP_OK;
}

static const cmp_spin_policy wire_spin = {CMP_WIRE_SPIN_MAX_NS, CMP_WIRE_SPIN_MIN_NS, 1};

static int
readable(void *p)
{
    struct pollfd *pfd = p;
    return poll(pfd, 1, 0) > 0;
}

int
cmp_wire_recv_header_spin(int fd, int is_socket, cmp_wire_rx *rx, cmp_spin_budget *budget,
                          int64_t *start)
{
    *start = 0;
    if (!is_socket || cmp_wire_rx_started(rx))
        return CMP_EEMPTY;
    /* The first bytes, if they are there: a non-blocking read of the header. */
    ssize_t n = read_header_bytes(fd, is_socket, rx, MSG_DONTWAIT);
    if (n > 0) {
        rx->hdr_have = (uint32_t)n;
        if (rx->hdr_have < rx->hdr_need)
            return CMP_EINTR; /* progress kept: the caller calls again */
        return cmp_wire_recv_header(fd, is_socket, rx);
    }
    if (n == 0)
        return CMP_EEOF;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
        return errno == EINTR ? CMP_EINTR : CMP_ERRNO;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (cmp_spin(&wire_spin, budget, readable, &p, CMP_FOREVER, start))
        return cmp_wire_recv_header(fd, is_socket, rx);
    return CMP_EEMPTY;
}

void
cmp_wire_spin_settle(cmp_spin_budget *budget, int64_t start)
{
    cmp_spin_settle(&wire_spin, budget, start);
}

int
cmp_wire_recv_body(int fd, cmp_wire_rx *rx)
{
    CMP_ASSERT(rx->header_done);
    while (rx->body_have < rx->len) {
        uint64_t want = rx->len - rx->body_have;
        if (want > (uint64_t)SSIZE_MAX)
            want = SSIZE_MAX;
        ssize_t n = read(fd, rx->body + rx->body_have, (size_t)want);
        if (n < 0) {
            int st = io_error(fd, POLLIN);
            if (st != CMP_OK)
                return st;
            continue;
        }
        if (n == 0)
            return CMP_EEOF;
        rx->body_have += (uint64_t)n;
        if (rx->body_have < rx->len)
            return CMP_EINTR; /* a short read may hide a signal, as above */
    }
    return CMP_OK;
}

/* ------------------------------------------------------------------------ */
/* Waiting                                                                  */

int
cmp_wire_poll(struct pollfd *fds, size_t nfds, int64_t deadline)
{
    int r = poll(fds, (nfds_t)nfds, cmp_poll_ms_left(deadline));
    if (r > 0)
        return r;
    if (r == 0)
        return cmp_poll_ms_left(deadline) == 0 ? CMP_ETIMEDOUT : CMP_EINTR;
    return errno == EINTR ? CMP_EINTR : CMP_ERRNO;
}
