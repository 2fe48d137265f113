/* Framed messages over file descriptors: see wire.h. */
#include "wire.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* Room for the largest SCM_RIGHTS message, aligned for struct cmsghdr. */
typedef union {
    char buf[CMSG_SPACE(sizeof(int) * CMP_WIRE_MAX_FDS)];
    struct cmsghdr align;
} cmp_cmsg_space;

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
    tx_advance(tx, 0);   /* skip leading empty pieces */
    while (tx->iovcnt > 0) {
        int cnt = tx->iovcnt > IOV_MAX ? IOV_MAX : tx->iovcnt;
        ssize_t n;
        if (tx->is_socket) {
            struct msghdr m = {.msg_iov = tx->iov, .msg_iovlen = (size_t)cnt};
            cmp_cmsg_space cmsg;
            if (tx->nfds > 0) {
                CMP_ASSERT(tx->nfds <= CMP_WIRE_MAX_FDS);
                size_t size = sizeof(int) * (size_t)tx->nfds;
                memset(&cmsg, 0, sizeof(cmsg));
                m.msg_control = cmsg.buf;
                m.msg_controllen = CMSG_SPACE(size);
                struct cmsghdr *c = CMSG_FIRSTHDR(&m);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(size);
                memcpy(CMSG_DATA(c), tx->fds, size);
            }
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
            tx->fds = NULL;   /* they went with the first byte */
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

/* Keep the descriptors of an SCM_RIGHTS message; close any beyond room. */
static void
collect_fds(cmp_wire_rx *rx, struct msghdr *m)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) {
            int received;
            memcpy(&received, data + i * sizeof(int), sizeof(int));
            if (rx->nfds < CMP_WIRE_MAX_FDS)
                rx->fds[rx->nfds++] = received;
            else
                close(received);
        }
    }
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
            void *dst = rx->hdr + rx->hdr_have;
            size_t want = rx->hdr_need - rx->hdr_have;
            ssize_t n;
            if (is_socket) {
                struct iovec iov = {.iov_base = dst, .iov_len = want};
                cmp_cmsg_space cmsg;
                struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
                                   .msg_control = cmsg.buf,
                                   .msg_controllen = sizeof(cmsg.buf)};
                n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
                if (n >= 0 && m.msg_controllen > 0)
                    collect_fds(rx, &m);
            }
            else {
                n = read(fd, dst, want);
            }
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
                return CMP_EINTR;   /* a short read may hide a signal, as above */
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

int
cmp_wire_recv_header_spin(int fd, int is_socket, cmp_wire_rx *rx, uint32_t *budget_ns,
                          int64_t *start_ns)
{
    *start_ns = 0;
    if (!is_socket || cmp_wire_rx_started(rx))
        return CMP_EEMPTY;
    /* The first bytes, if they are there: a non-blocking read of the header. */
    struct iovec iov = {.iov_base = rx->hdr, .iov_len = rx->hdr_need};
    cmp_cmsg_space cmsg;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
                       .msg_control = cmsg.buf, .msg_controllen = sizeof(cmsg.buf)};
    ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n > 0) {
        if (m.msg_controllen > 0)
            collect_fds(rx, &m);
        rx->hdr_have = (uint32_t)n;
        if (rx->hdr_have < rx->hdr_need)
            return CMP_EINTR;   /* progress kept: the caller calls again */
        return cmp_wire_recv_header(fd, is_socket, rx);
    }
    if (n == 0)
        return CMP_EEOF;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
        return errno == EINTR ? CMP_EINTR : CMP_ERRNO;

    uint32_t ns = *budget_ns;
    if (ns == 0 || ns > CMP_WIRE_SPIN_MAX_NS)
        ns = CMP_WIRE_SPIN_MAX_NS;
    int64_t start = cmp_monotonic_ns(), end = start + ns;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    do {
        if (poll(&p, 1, 0) > 0) {
            if (ns < CMP_WIRE_SPIN_MAX_NS)
                *budget_ns = ns * 2;
            return cmp_wire_recv_header(fd, is_socket, rx);
        }
    } while (cmp_monotonic_ns() < end);
    *start_ns = start;
    return CMP_EEMPTY;
}

void
cmp_wire_spin_settle(uint32_t *budget_ns, int64_t start_ns)
{
    if (start_ns == 0)
        return;
    uint32_t ns = *budget_ns;
    if (ns == 0 || ns > CMP_WIRE_SPIN_MAX_NS)
        ns = CMP_WIRE_SPIN_MAX_NS;
    if (cmp_monotonic_ns() - start_ns <= CMP_WIRE_SPIN_MAX_NS)
        *budget_ns = CMP_WIRE_SPIN_MAX_NS;
    else if (ns > CMP_WIRE_SPIN_MIN_NS)
        *budget_ns = ns / 2;
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
            return CMP_EINTR;   /* a short read may hide a signal, as above */
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
