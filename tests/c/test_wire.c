/* Unit tests of src/core/wire.c: framing, resumable reads and writes,
 * descriptor passing, polling. */
#include "ctest.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Retry while the core asks to be called again (no handlers to run here). */
static int
send_all(int fd, cmp_wire_tx *tx)
{
    int st;
    while ((st = cmp_wire_send(fd, tx)) == CMP_EINTR)
        ;
    return st;
}

static int
send_frame(int fd, int is_socket, const void *data, size_t len)
{
    unsigned char hdr[CMP_WIRE_HEADER_MAX];
    struct iovec iov[2] = {{hdr, cmp_wire_header(len, hdr)}, {(void *)data, len}};
    cmp_wire_tx tx = {.iov = iov, .iovcnt = 2, .is_socket = is_socket};
    return send_all(fd, &tx);
}

static int
recv_header(int fd, int is_socket, cmp_wire_rx *rx)
{
    int st;
    while ((st = cmp_wire_recv_header(fd, is_socket, rx)) == CMP_EINTR)
        ;
    return st;
}

static int
recv_body(int fd, cmp_wire_rx *rx)
{
    int st;
    while ((st = cmp_wire_recv_body(fd, rx)) == CMP_EINTR)
        ;
    return st;
}

/* Receive one frame into a malloc'ed buffer (*out), its length in *len. */
static int
recv_frame(int fd, int is_socket, cmp_wire_rx *rx, char **out, uint64_t *len)
{
    cmp_wire_rx_reset(rx);
    int st = recv_header(fd, is_socket, rx);
    if (st != CMP_OK)
        return st;
    *len = rx->len;
    *out = malloc(rx->len ? rx->len : 1);
    rx->body = *out;
    return recv_body(fd, rx);
}

CTEST(header_short_and_long_forms)
{
    unsigned char h[CMP_WIRE_HEADER_MAX];
    CHECK_EQ(cmp_wire_header(0, h), 4);
    CHECK(memcmp(h, "\0\0\0\0", 4) == 0);
    CHECK_EQ(cmp_wire_header(0x01020304, h), 4);
    CHECK(memcmp(h, "\x01\x02\x03\x04", 4) == 0);
    CHECK_EQ(cmp_wire_header(0x7ffffffe, h), 4);
    /* from 2**31 - 1 on: the -1 marker and an 8-byte length (the stdlib
     * uses the long form for n > 0x7fffffff; both read either) */
    CHECK_EQ(cmp_wire_header(0x7fffffffULL, h), 12);
    CHECK_EQ(cmp_wire_header(0x123456789aULL, h), 12);
    CHECK(memcmp(h, "\xff\xff\xff\xff\0\0\0\x12\x34\x56\x78\x9a", 12) == 0);
}

CTEST(roundtrip_on_socketpair_and_pipe)
{
    for (int kind = 0; kind < 2; kind++) {
        int sv[2];
        if (kind == 0)
            CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        else
            CHECK_EQ(pipe(sv), 0);
        int wfd = kind == 0 ? sv[0] : sv[1], rfd = kind == 0 ? sv[1] : sv[0];
        CHECK_EQ(cmp_wire_fd_kind(rfd), kind == 0 ? CMP_WIRE_UNIX : CMP_WIRE_PIPE);
        CHECK_EQ(send_frame(wfd, kind == 0, "hello", 5), CMP_OK);
        CHECK_EQ(send_frame(wfd, kind == 0, "", 0), CMP_OK);
        cmp_wire_rx rx;
        char *buf = NULL;
        uint64_t len = 0;
        CHECK_EQ(recv_frame(rfd, kind == 0, &rx, &buf, &len), CMP_OK);
        CHECK_EQ(len, 5);
        CHECK(memcmp(buf, "hello", 5) == 0);
        free(buf);
        CHECK_EQ(recv_frame(rfd, kind == 0, &rx, &buf, &len), CMP_OK);
        CHECK_EQ(len, 0);
        free(buf);
        close(wfd);
        cmp_wire_rx_reset(&rx);
        CHECK_EQ(recv_header(rfd, kind == 0, &rx), CMP_EEOF);
        CHECK(!cmp_wire_rx_started(&rx));
        close(rfd);
    }
}

CTEST(reads_never_pass_the_frame)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(send_frame(sv[0], 1, "one", 3), CMP_OK);
    CHECK_EQ(send_frame(sv[0], 1, "second", 6), CMP_OK);
    cmp_wire_rx rx;
    char *buf;
    uint64_t len;
    CHECK_EQ(recv_frame(sv[1], 1, &rx, &buf, &len), CMP_OK);
    free(buf);
    /* the second frame is still whole in the socket */
    char raw[16];
    CHECK_EQ(read(sv[1], raw, sizeof(raw)), 10);
    CHECK(memcmp(raw, "\0\0\0\x06second", 10) == 0);
    close(sv[0]);
    close(sv[1]);
}

CTEST(long_header_form_is_read)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(write(sv[0],
                   "\xff\xff\xff\xff\0\0\0\0\0\0\0\x03"
                   "abc",
                   15),
             15);
    cmp_wire_rx rx;
    char *buf;
    uint64_t len;
    CHECK_EQ(recv_frame(sv[1], 1, &rx, &buf, &len), CMP_OK);
    CHECK_EQ(len, 3);
    CHECK(memcmp(buf, "abc", 3) == 0);
    free(buf);
    close(sv[0]);
    close(sv[1]);
}

CTEST(bad_and_truncated_headers)
{
    int sv[2];
    cmp_wire_rx rx;
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(write(sv[0], "\xff\xff\xff\xfe", 4), 4); /* -2 */
    cmp_wire_rx_reset(&rx);
    CHECK_EQ(recv_header(sv[1], 1, &rx), CMP_EBADMSG);
    close(sv[0]);
    close(sv[1]);

    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(write(sv[0], "\0\0", 2), 2); /* half a header */
    close(sv[0]);
    cmp_wire_rx_reset(&rx);
    CHECK_EQ(recv_header(sv[1], 1, &rx), CMP_EEOF);
    CHECK(cmp_wire_rx_started(&rx));
    close(sv[1]);

    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(write(sv[0],
                   "\0\0\0\x09"
                   "abc",
                   7),
             7); /* short body */
    close(sv[0]);
    char *buf;
    uint64_t len;
    CHECK_EQ(recv_frame(sv[1], 1, &rx, &buf, &len), CMP_EEOF);
    CHECK_EQ(rx.body_have, 3);
    free(buf);
    close(sv[1]);
}

/* End of file between the stdlib's reads of a frame is EOFError, inside one
 * "got end of file during message". */
CTEST(eof_inside_a_read_is_told_from_eof_between_reads)
{
    static const struct {
        const char *bytes;
        size_t n;
        int inside;
    } cases[] = {
            {"", 0, 0},
            {"\0\0", 2, 1},
            {"\xff\xff\xff\xff", 4, 0}, /* the marker, then nothing */
            {"\xff\xff\xff\xff\0\0", 6, 1},
            {"\0\0\0\x03", 4, 0}, /* the length, then no payload */
            {"\0\0\0\003a", 5, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int sv[2];
        CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        CHECK_EQ(write(sv[0], cases[i].bytes, cases[i].n), (ssize_t)cases[i].n);
        close(sv[0]);
        cmp_wire_rx rx;
        char *buf = NULL;
        uint64_t len;
        CHECK_EQ(recv_frame(sv[1], 1, &rx, &buf, &len), CMP_EEOF);
        CHECK_EQ(cmp_wire_rx_eof_inside(&rx), cases[i].inside);
        free(buf);
        close(sv[1]);
    }
}

CTEST(reads_resume_after_a_short_read)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    cmp_wire_rx rx;
    cmp_wire_rx_reset(&rx);
    CHECK_EQ(write(sv[0], "\0\0", 2), 2);
    /* a short read: CMP_EINTR with the progress kept */
    CHECK_EQ(cmp_wire_recv_header(sv[1], 1, &rx), CMP_EINTR);
    CHECK_EQ(rx.hdr_have, 2);
    CHECK_EQ(write(sv[0],
                   "\0\x04"
                   "ab",
                   4),
             4);
    CHECK_EQ(cmp_wire_recv_header(sv[1], 1, &rx), CMP_OK);
    CHECK_EQ(rx.len, 4);
    char body[4];
    rx.body = body;
    CHECK_EQ(cmp_wire_recv_body(sv[1], &rx), CMP_EINTR);
    CHECK_EQ(rx.body_have, 2);
    CHECK_EQ(write(sv[0], "cd", 2), 2);
    CHECK_EQ(cmp_wire_recv_body(sv[1], &rx), CMP_OK);
    CHECK(memcmp(body, "abcd", 4) == 0);
    close(sv[0]);
    close(sv[1]);
}

static void
on_alarm(int sig)
{
    (void)sig;
}

CTEST(blocked_read_returns_eintr_on_a_signal)
{
    struct sigaction sa = {.sa_handler = on_alarm}, old; /* no SA_RESTART */
    sigemptyset(&sa.sa_mask);
    CHECK_EQ(sigaction(SIGALRM, &sa, &old), 0);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    cmp_wire_rx rx;
    cmp_wire_rx_reset(&rx);
    alarm(1);
    int st = cmp_wire_recv_header(sv[1], 1, &rx);
    alarm(0);
    sigaction(SIGALRM, &old, NULL);
    CHECK_EQ(st, CMP_EINTR);
    CHECK(!cmp_wire_rx_started(&rx));
    close(sv[0]);
    close(sv[1]);
}

struct reader_arg {
    int fd;
    size_t len;
    char *got;
    int st;
};

static void *
reader(void *p)
{
    struct reader_arg *a = p;
    cmp_wire_rx rx;
    uint64_t len = 0;
    a->st = recv_frame(a->fd, 1, &rx, &a->got, &len);
    a->len = (size_t)len;
    return NULL;
}

CTEST(large_frame_with_many_pieces)
{
    /* More pieces than IOV_MAX and more bytes than the socket buffer. */
    enum { PIECES = 3000, PIECE = 1000 };
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    char *data = malloc((size_t)PIECES * PIECE);
    for (size_t i = 0; i < (size_t)PIECES * PIECE; i++)
        data[i] = (char)(i * 7 + i / 251);
    struct iovec *iov = calloc(PIECES + 1, sizeof(*iov));
    unsigned char hdr[CMP_WIRE_HEADER_MAX];
    iov[0].iov_base = hdr;
    iov[0].iov_len = cmp_wire_header((uint64_t)PIECES * PIECE, hdr);
    for (int i = 0; i < PIECES; i++) {
        iov[i + 1].iov_base = data + (size_t)i * PIECE;
        iov[i + 1].iov_len = PIECE;
    }
    struct reader_arg a = {.fd = sv[1]};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, reader, &a), 0);
    cmp_wire_tx tx = {.iov = iov, .iovcnt = PIECES + 1, .is_socket = 1};
    CHECK_EQ(send_all(sv[0], &tx), CMP_OK);
    CHECK_EQ(tx.sent, (uint64_t)PIECES * PIECE + 4);
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_EQ(a.st, CMP_OK);
    CHECK_EQ(a.len, (size_t)PIECES * PIECE);
    CHECK(memcmp(a.got, data, a.len) == 0);
    free(a.got);
    free(data);
    free(iov);
    close(sv[0]);
    close(sv[1]);
}

CTEST(descriptors_travel_with_the_frame)
{
    int sv[2], p[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(pipe(p), 0);
    unsigned char hdr[CMP_WIRE_HEADER_MAX];
    struct iovec iov[2] = {{hdr, cmp_wire_header(2, hdr)}, {"fd", 2}};
    int fds[2] = {p[0], p[1]};
    cmp_wire_tx tx = {.iov = iov, .iovcnt = 2, .fds = fds, .nfds = 2, .is_socket = 1};
    CHECK_EQ(send_all(sv[0], &tx), CMP_OK);
    CHECK_EQ(tx.nfds, 0);
    close(p[0]);
    close(p[1]);
    cmp_wire_rx rx;
    char *buf;
    uint64_t len;
    CHECK_EQ(recv_frame(sv[1], 1, &rx, &buf, &len), CMP_OK);
    free(buf);
    CHECK_EQ(rx.nfds, 2);
    CHECK((fcntl(rx.fds[0], F_GETFD) & FD_CLOEXEC) != 0);
    /* the passed pipe works */
    CHECK_EQ(write(rx.fds[1], "z", 1), 1);
    char c = 0;
    CHECK_EQ(read(rx.fds[0], &c, 1), 1);
    CHECK_EQ(c, 'z');
    close(rx.fds[0]);
    close(rx.fds[1]);
    close(sv[0]);
    close(sv[1]);
}

CTEST(send_to_a_closed_reader_is_epipe)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    close(sv[1]);
    errno = 0;
    CHECK_EQ(send_frame(sv[0], 1, "x", 1), CMP_ERRNO); /* MSG_NOSIGNAL: no SIGPIPE */
    CHECK_EQ(errno, EPIPE);
    close(sv[0]);
}

CTEST(poll_times_out_and_reports_ready)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct pollfd p[2] = {{.fd = sv[0], .events = POLLIN}, {.fd = sv[1], .events = POLLIN}};
    int64_t start = cmp_monotonic_ns();
    CHECK_EQ(cmp_wire_poll(p, 2, cmp_deadline_after(0.05)), CMP_ETIMEDOUT);
    CHECK(cmp_monotonic_ns() - start >= 50000000LL);
    CHECK_EQ(write(sv[0], "x", 1), 1);
    CHECK_EQ(cmp_wire_poll(p, 2, cmp_deadline_after(1.0)), 1);
    CHECK_EQ(p[0].revents, 0);
    CHECK(p[1].revents & POLLIN);
    close(sv[0]);
    close(sv[1]);
}

CTEST(dup_is_cloexec_and_close)
{
    int p[2];
    CHECK_EQ(pipe(p), 0);
    int d = cmp_wire_dup(p[0]);
    CHECK(d >= 0);
    CHECK((fcntl(d, F_GETFD) & FD_CLOEXEC) != 0);
    CHECK_EQ(cmp_wire_close(d), CMP_OK);
    CHECK_EQ(cmp_wire_close(p[0]), CMP_OK);
    CHECK_EQ(cmp_wire_close(p[1]), CMP_OK);
}

CTEST(spin_reads_a_waiting_frame_without_blocking)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    unsigned char frame[] = {0, 0, 0, 3, 'a', 'b', 'c'};
    CHECK(write(sv[0], frame, sizeof frame) == (ssize_t)sizeof frame);
    cmp_wire_rx rx;
    cmp_wire_rx_reset(&rx);
    cmp_spin_budget budget = 0;
    int64_t start = -1;
    CHECK_EQ(cmp_wire_recv_header_spin(sv[1], 1, &rx, &budget, &start), CMP_OK);
    CHECK_EQ(rx.len, 3);
    CHECK_EQ(budget, 0); /* no spin happened: nothing to adapt */
    CHECK_EQ(start, 0);
    close(sv[0]);
    close(sv[1]);
}

CTEST(spin_gives_up_then_settles_on_the_wait)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    cmp_wire_rx rx;
    cmp_wire_rx_reset(&rx);
    cmp_spin_budget budget = 8000;
    int64_t start, t0 = cmp_monotonic_ns();
    CHECK_EQ(cmp_wire_recv_header_spin(sv[1], 1, &rx, &budget, &start), CMP_EEMPTY);
    CHECK(cmp_monotonic_ns() - t0 >= 8000);
    CHECK(start >= t0);
    CHECK_EQ(budget, 8000);
    CHECK(!cmp_wire_rx_started(&rx));
    /* A wait no longer than the longest spin: spinning would have caught it. */
    cmp_wire_spin_settle(&budget, cmp_monotonic_ns());
    CHECK_EQ(budget, CMP_WIRE_SPIN_MAX_NS);
    /* Long waits halve it, down to the minimum. */
    for (int i = 0; i < 20; i++)
        cmp_wire_spin_settle(&budget, cmp_monotonic_ns() - 10 * CMP_WIRE_SPIN_MAX_NS);
    CHECK(budget <= CMP_WIRE_SPIN_MIN_NS && budget > CMP_WIRE_SPIN_MIN_NS / 2);
    cmp_wire_spin_settle(&budget, 0); /* did not spin */
    /* The peer closing is end of file, not "go on and block". */
    close(sv[0]);
    CHECK_EQ(cmp_wire_recv_header_spin(sv[1], 1, &rx, &budget, &start), CMP_EEOF);
    close(sv[1]);
}

CTEST(spin_header_split_across_reads)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    unsigned char frame[] = {0, 0, 0, 2, 'h', 'i'};
    CHECK(write(sv[0], frame, 2) == 2); /* half a header now */
    cmp_wire_rx rx;
    cmp_wire_rx_reset(&rx);
    cmp_spin_budget budget = 0;
    int64_t start;
    CHECK_EQ(cmp_wire_recv_header_spin(sv[1], 1, &rx, &budget, &start), CMP_EINTR);
    CHECK(cmp_wire_rx_started(&rx));
    CHECK(write(sv[0], frame + 2, 4) == 4);
    CHECK_EQ(cmp_wire_recv_header(sv[1], 1, &rx), CMP_OK);
    CHECK_EQ(rx.len, 2);
    close(sv[0]);
    close(sv[1]);
}

CTEST(pipes_do_not_spin)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    cmp_wire_rx rx;
    cmp_wire_rx_reset(&rx);
    cmp_spin_budget budget = 0;
    int64_t start = -1;
    CHECK_EQ(cmp_wire_recv_header_spin(p[0], 0, &rx, &budget, &start), CMP_EEMPTY);
    CHECK_EQ(budget, 0);
    CHECK_EQ(start, 0);
    close(p[0]);
    close(p[1]);
}

int
main(void)
{
    return ctest_main();
}
