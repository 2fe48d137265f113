/* Unit tests of src/core/chan.c: the bell protocol keeps "a message in the
 * ring means the reader's descriptor is readable", also under a racing
 * producer process; end of file; descriptor records. */
#include "ctest.h"
#include "chan.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CAP ((size_t)4096)

static void *
new_chan(int nrings, cmp_chan *c)
{
    size_t size = cmp_chan_size(nrings, CAP);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED || cmp_chan_init(mem, nrings, CAP, c) != CMP_OK)
        return NULL;
    return mem;
}

static int
put(cmp_chan *c, int k, int fd, const char *s)
{
    struct iovec iov = {(void *)s, strlen(s)};
    cmp_ring_msg m = {&iov, 1, strlen(s)};
    cmp_ring_wop op;
    cmp_ring_wop_init(&op, &m, 0);
    int st = cmp_ring_write(c->ring[k], &op);
    return st != CMP_OK ? st : cmp_chan_notify(c, k, fd, 1);
}

static int
take(cmp_chan *c, int k, char *buf, size_t cap)
{
    size_t len;
    cmp_ring_rop op;
    cmp_ring_rop_init(&op, (unsigned char *)buf, cap, &len, 1);
    int st = cmp_ring_take(c->ring[k], &op, 0);
    if (st != CMP_OK)
        return -1;
    buf[len] = 0;
    return (int)len;
}

static int
readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

CTEST(bell_follows_the_ring)
{
    cmp_chan c;
    void *mem = new_chan(2, &c);
    CHECK(mem != NULL);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    /* end 1 sends to ring 0, read on sv[0] */
    CHECK_EQ(cmp_chan_ready(&c, 0, sv[0], 1), CMP_CHAN_QUIET);
    CHECK(!readable(sv[0]));
    CHECK_EQ(put(&c, 0, sv[1], "a"), CMP_OK);
    CHECK(readable(sv[0]));
    CHECK_EQ(put(&c, 0, sv[1], "b"), CMP_OK); /* rung already: no second bell */
    char buf[64];
    CHECK_EQ(take(&c, 0, buf, sizeof(buf)), 1);
    CHECK_EQ(cmp_chan_ready(&c, 0, sv[0], 1), CMP_CHAN_MESSAGE); /* "b" is there: bell kept */
    CHECK(readable(sv[0]));
    CHECK_EQ(take(&c, 0, buf, sizeof(buf)), 1);
    CHECK(!strcmp(buf, "b"));
    cmp_chan_quiesce(&c, 0, sv[0], 1);
    CHECK(!readable(sv[0])); /* exact again */
    CHECK_EQ(put(&c, 0, sv[1], "c"), CMP_OK);
    CHECK(readable(sv[0]));
    CHECK_EQ(cmp_chan_wait(&c, 0, sv[0], 1, cmp_monotonic_ns(), &(cmp_spin_budget){0}), CMP_OK);
    close(sv[1]);
    CHECK_EQ(take(&c, 0, buf, sizeof(buf)), 1);
    CHECK_EQ(cmp_chan_ready(&c, 0, sv[0], 1), CMP_CHAN_GONE); /* empty, and the end */
    CHECK_EQ(cmp_chan_wait(&c, 0, sv[0], 1, CMP_FOREVER, &(cmp_spin_budget){0}), CMP_EEOF);
    close(sv[0]);
    munmap(mem, cmp_chan_size(2, CAP));
}

CTEST(racing_producer_never_strands_a_message)
{
    /* A child sends N messages with pauses of every length; the parent
     * sleeps only in cmp_chan_wait, so a lost bell would hang it (the
     * binary's timeout fails the test). */
    cmp_chan c;
    void *mem = new_chan(2, &c);
    CHECK(mem != NULL);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    enum { N = 20000 };
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        for (int i = 0; i < N; i++) {
            if (put(&c, 0, sv[1], "m") != CMP_OK)
                _exit(1);
            for (volatile int j = 0; j < (i * 7919) % 3000; j++)
                ;
        }
        _exit(0);
    }
    close(sv[1]);
    int got = 0;
    cmp_spin_budget spin = 1000;
    char buf[16];
    while (got < N) {
        if (take(&c, 0, buf, sizeof(buf)) == 1) {
            got++;
            continue;
        }
        int st = cmp_chan_wait(&c, 0, sv[0], 1, CMP_FOREVER, &spin);
        if (st != CMP_OK)
            break;
    }
    CHECK_EQ(got, N);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(sv[0]);
    munmap(mem, cmp_chan_size(2, CAP));
}

CTEST(descriptor_records_skip_bells)
{
    int sv[2], p[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    CHECK_EQ(pipe(p), 0);
    CHECK_EQ(send(sv[1], "b", 1, 0), 1); /* a stale bell ahead */
    CHECK_EQ(cmp_chan_send_fds(sv[1], p, 2), CMP_OK);
    int fds[4], n = 4;
    CHECK_EQ(cmp_chan_recv_fds(sv[0], fds, &n), CMP_OK);
    CHECK_EQ(n, 2);
    CHECK_EQ(write(p[1], "x", 1), 1);
    char ch = 0;
    CHECK_EQ(read(fds[0], &ch, 1), 1); /* the same pipe */
    CHECK_EQ(ch, 'x');
    for (int i = 0; i < 2; i++) {
        close(fds[i]);
        close(p[i]);
        close(sv[i]);
    }
}

CTEST(stray_byte_is_a_protocol_error)
{
    /* A byte written to the descriptor directly (not a bell, not a
     * descriptor record) is neither a message nor the end: recv() says so. */
    cmp_chan c;
    void *mem = new_chan(2, &c);
    CHECK(mem != NULL);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    CHECK_EQ(send(sv[1], "x", 1, 0), 1);
    CHECK_EQ(cmp_chan_ready(&c, 0, sv[0], 1), CMP_CHAN_STRAY_BYTE);
    errno = 0;
    CHECK_EQ(cmp_chan_wait(&c, 0, sv[0], 1, CMP_FOREVER, &(cmp_spin_budget){0}), CMP_ERRNO);
    CHECK_EQ(errno, EPROTO);
    CHECK_EQ(put(&c, 0, sv[1], "a"), CMP_OK); /* a message still comes first */
    CHECK_EQ(cmp_chan_ready(&c, 0, sv[0], 1), CMP_CHAN_MESSAGE);
    close(sv[0]);
    close(sv[1]);
    munmap(mem, cmp_chan_size(2, CAP));
}

CTEST(pipe_peer_gone)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_NONBLOCK), 0);
    CHECK(!cmp_chan_peer_gone(p[1]));
    close(p[0]);
    CHECK(cmp_chan_peer_gone(p[1]));
    close(p[1]);
}

int
main(void)
{
    signal(SIGPIPE, SIG_IGN);
    return ctest_main();
}
