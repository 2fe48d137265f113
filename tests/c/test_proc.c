/* Unit tests of src/core/clock.c and proc.c. */
#include "ctest.h"
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

CTEST(deadline_never_early)
{
    int64_t start = cmp_monotonic_ns();
    int64_t d = cmp_deadline_after(0.05);
    CHECK(d - start >= 50000000LL);
    CHECK(cmp_poll_ms_left(d) >= 1);
    CHECK_EQ(cmp_deadline_after(1e300), CMP_FOREVER);
    CHECK_EQ(cmp_poll_ms_left(CMP_FOREVER), -1);
    CHECK(cmp_deadline_after(-1.0) <= cmp_monotonic_ns());
}

CTEST(fork_pidfd_reap_exit_status)
{
    pid_t pid = cmp_fork(0, -1);
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(7);
    int fd = cmp_pidfd_open(pid);
    CHECK(fd >= 0);
    CHECK_EQ(cmp_wait_readable(fd, cmp_deadline_after(10.0)), CMP_OK);
    int code = 0;
    CHECK_EQ(cmp_reap(pid, &code), CMP_OK);
    CHECK_EQ(code, 7);
    close(fd);
}

CTEST(pidfd_kill_reports_signal)
{
    pid_t pid = cmp_fork(0, -1);
    CHECK(pid >= 0);
    if (pid == 0) {
        pause();
        _exit(0);
    }
    int fd = cmp_pidfd_open(pid);
    CHECK(fd >= 0);
    int code = 0;
    CHECK_EQ(cmp_reap(pid, &code), CMP_EEMPTY);
    CHECK_EQ(cmp_wait_readable(fd, cmp_deadline_after(0.02)), CMP_ETIMEDOUT);
    CHECK_EQ(cmp_pidfd_kill(fd, SIGKILL), CMP_OK);
    CHECK_EQ(cmp_wait_readable(fd, CMP_FOREVER), CMP_OK);
    CHECK_EQ(cmp_reap(pid, &code), CMP_OK);
    CHECK_EQ(code, -SIGKILL);
    close(fd);
}

CTEST(child_dies_with_parent)
{
    /* middle forks a daemon-like grandchild that must die with middle. */
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t middle = fork();
    CHECK(middle >= 0);
    if (middle == 0) {
        pid_t g = cmp_fork(1, -1);
        if (g == 0) {
            close(p[0]);
            for (;;)
                pause();
        }
        if (write(p[1], &g, sizeof g) != sizeof g)
            _exit(2);
        _exit(0); /* middle exits: the grandchild must follow */
    }
    close(p[1]);
    pid_t g = 0;
    CHECK(read(p[0], &g, sizeof g) == sizeof g);
    close(p[0]);
    int st;
    CHECK(waitpid(middle, &st, 0) == middle);
    int gfd = cmp_pidfd_open(g);
    if (gfd < 0) { /* already gone and reaped by init */
        CHECK(errno == ESRCH);
        return;
    }
    CHECK_EQ(cmp_wait_readable(gfd, cmp_deadline_after(5.0)), CMP_OK);
    close(gfd);
}

/* The child pid wrote "ok" (and a newline) to fd and exited with 0. */
static int
says_ok_and_exits_0(int fd, pid_t pid)
{
    char buf[8] = {0};
    int st;
    return read(fd, buf, sizeof buf - 1) == 3 && buf[0] == 'o' && buf[1] == 'k'
           && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

CTEST(spawn_keeps_only_listed_fds)
{
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    char arg[64];
    snprintf(arg, sizeof arg, "echo ok >&%d", p[1]);
    char *argv[] = {"sh", "-c", arg, NULL};
    char *envp[] = {NULL};
    pid_t pid = cmp_spawn("/bin/sh", argv, envp, &p[1], 1);
    CHECK(pid > 0);
    close(p[1]);
    CHECK(says_ok_and_exits_0(p[0], pid));
    close(p[0]);
}

CTEST(spawn_clean_renumbers_kept_fds_and_closes_the_rest)
{
    int p[2], null = open("/dev/null", O_RDONLY);
    CHECK(null >= 0);
    int extra = fcntl(null, F_DUPFD, 20); /* inheritable, not kept */
    CHECK(extra >= 20);
    close(null);
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    int high = fcntl(p[1], F_DUPFD_CLOEXEC, 40); /* placed at 3 across a gap */
    CHECK(high >= 40);
    char arg[64];
    snprintf(arg, sizeof arg, "echo ok >&3; [ -e /proc/self/fd/%d ] && exit 3; exit 0", extra);
    char *argv[] = {"sh", "-c", arg, NULL};
    char *envp[] = {NULL};
    pid_t pid = cmp_spawn_clean("/bin/sh", argv, envp, &high, 1);
    CHECK(pid > 0);
    close(p[1]);
    close(high);
    CHECK(says_ok_and_exits_0(p[0], pid));
    close(p[0]);
    close(extra);
}

CTEST(fs_send_recv_carries_payload_and_fds)
{
    int sv[2], p[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    CHECK_EQ(pipe(p), 0);
    unsigned char key[CMP_FS_KEY_LEN] = {1, 2, 3};
    static char payload[300000]; /* more than a socket buffer */
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (char)(i * 7);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        _exit(cmp_fs_send(sv[1], key, payload, sizeof(payload), &p[1], 1) == CMP_OK ? 0 : 1);
    }
    close(sv[1]);
    cmp_fs_req req;
    CHECK_EQ(cmp_fs_recv(sv[0], &req), CMP_OK);
    CHECK_EQ(req.size, sizeof(payload));
    CHECK_EQ(req.nfds, 1);
    static char got[sizeof(payload)];
    CHECK_EQ(cmp_read_exact(sv[0], got, sizeof(got)), CMP_OK);
    CHECK(memcmp(got, payload, sizeof(got)) == 0);
    /* The descriptor works: write through it, read from the pipe. */
    CHECK_EQ(write(req.fds[0], "x", 1), 1);
    char c = 0;
    CHECK_EQ(read(p[0], &c, 1), 1);
    CHECK_EQ(c, 'x');
    CHECK_EQ(cmp_fs_recv(sv[0], &req), CMP_EEOF);
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(req.fds[0]);
    close(sv[0]);
    close(p[0]);
    close(p[1]);
}

/* A child of the test server: read the payload (one byte: the exit code),
 * tell the pipe it got (its first descriptor) who it is and whether it was
 * a spare, and exit (a spare's child telling its exit code itself). */
static void
fs_child(cmp_fs_req *req, char how, int warm)
{
    char code = 0;
    if (cmp_read_exact(req->conn, &code, 1) != CMP_OK || req->nfds != 1)
        _exit(100);
    char line[32];
    int n = snprintf(line, sizeof line, "%c%d %d\n", how, (int)getpid(), warm);
    if (write(req->fds[0], line, (size_t)n) != n)
        _exit(101);
    if (how == 'S')
        cmp_fs_child_exit(req->conn, code);
    _exit(code);
}

/* The binding's loop (src/module/process.c), without Python; a spare told
 * to warm up spends warm_up_us at it. */
static void
fs_serve(int listener, int alive, const unsigned char *key, int warm_up_us)
{
    cmp_fs_server s;
    cmp_fs_req req;
    if (cmp_fs_server_init(&s, listener, alive, key) != CMP_OK)
        _exit(102);
    for (;;) {
        int st = cmp_fs_next(&s, &req);
        if (st == CMP_EEOF)
            _exit(0);
        if (st == CMP_FS_SPARE) {
            if (cmp_fs_spare_open(&s) != CMP_OK)
                continue;
            pid_t pid = fork();
            if (pid == 0) {
                int bell, warm;
                int end = cmp_fs_in_spare(&s, &bell, &warm);
                if (warm && warm_up_us > 0)
                    usleep((useconds_t)warm_up_us);
                int r = cmp_fs_take(end, bell, &req);
                if (r == CMP_EEOF)
                    _exit(0);
                if (r != CMP_OK)
                    _exit(103);
                fs_child(&req, 'S', warm);
            }
            cmp_fs_spare_forked(&s, pid);
            continue;
        }
        if (st == CMP_EINTR)
            continue;
        if (st != CMP_OK)
            _exit(104);
        pid_t pid = fork();
        if (pid == 0) {
            cmp_fs_in_child(&s);
            fs_child(&req, 'D', 0);
        }
        cmp_fs_forked(&s, &req, pid, errno);
    }
}

/* Ask the server for a child that exits with `code`: what it wrote to
 * `report` ('D' forked for the request, 'S' the spare), or 0 if something
 * failed; its pid and exit status. */
static char
fs_start(const char *addr, size_t addrlen, const unsigned char *key, int report_w, int report_r,
         char code, int64_t *pid, int *status, int *warm)
{
    int sock;
    if (cmp_fs_request(addr, addrlen, 0, key, &code, 1, &report_w, 1, &sock, pid) != CMP_OK)
        return 0;
    char line[32] = {0};
    ssize_t n = read(report_r, line, sizeof line - 1);
    int ok = n > 2 && atoi(line + 1) == (int)*pid;
    const char *flag = strchr(line, ' ');
    if (warm != NULL)
        *warm = flag != NULL && atoi(flag + 1);
    /* The exit code: the first answer that is not the pid again. */
    int64_t v = CMP_FS_PID_TAG;
    while (ok && v >= CMP_FS_PID_TAG) {
        unsigned char buf[8];
        ok = cmp_read_exact(sock, buf, 8) == CMP_OK;
        v = 0;
        for (int i = 7; i >= 0; i--)
            v = (v << 8) | buf[i];
        ok = ok && (v < CMP_FS_PID_TAG || v == CMP_FS_PID_TAG + *pid);
    }
    close(sock);
    *status = (int)v;
    return ok ? line[0] : 0;
}

/* Start a test server on abstract address addr (its length in *addrlen);
 * its pid, or -1. The program is gone once alive[1] is closed. */
static pid_t
fs_server(const char *name, const unsigned char *key, int warm_up_us, int report[2], char *addr,
          int *addrlen, int alive[2])
{
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    *addrlen = snprintf(addr + 1, 63, "cmp-ctest-%s-%d", name, (int)getpid()) + 1;
    addr[0] = '\0';
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, addr, (size_t)*addrlen);
    if (listener < 0
        || bind(listener, (struct sockaddr *)&sa,
                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)*addrlen))
                   != 0
        || listen(listener, 8) != 0 || pipe(alive) != 0)
        return -1;
    pid_t server = fork();
    if (server == 0) {
        close(alive[1]);
        close(report[0]);
        close(report[1]);
        fs_serve(listener, alive[0], key, warm_up_us);
    }
    close(listener);
    close(alive[0]);
    return server;
}

CTEST(fs_server_hands_requests_to_a_spare)
{
    char addr[64];
    int addrlen, alive[2], report[2];
    CHECK_EQ(pipe(report), 0);
    unsigned char key[CMP_FS_KEY_LEN] = {9, 8, 7};
    pid_t server = fs_server("fs", key, 0, report, addr, &addrlen, alive);
    CHECK(server > 0);
    int64_t pid, spare = 0;
    int status;
    /* The first is forked for; each later one is the spare forked after it
     * (the requester never waits for the fork), with its own exit code. */
    CHECK_EQ(fs_start(addr, (size_t)addrlen, key, report[1], report[0], 3, &pid, &status, NULL),
             'D');
    CHECK_EQ(status, 3);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(fs_start(addr, (size_t)addrlen, key, report[1], report[0], (char)(10 + i), &pid,
                          &status, NULL),
                 'S');
        CHECK_EQ(status, 10 + i);
        CHECK(pid != spare);
        spare = pid;
    }
    /* A spare killed while it waits: the next request is forked for. */
    for (int tries = 0; tries < 500; tries++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)server, (int)server);
        FILE *f = fopen(path, "r");
        int kid = 0;
        if (f != NULL) {
            if (fscanf(f, "%d", &kid) != 1)
                kid = 0;
            fclose(f);
        }
        if (kid > 0) {
            CHECK_EQ(kill(kid, SIGKILL), 0);
            break;
        }
        usleep(10000);
    }
    usleep(100000); /* reaped */
    char how = fs_start(addr, (size_t)addrlen, key, report[1], report[0], 0, &pid, &status, NULL);
    CHECK(how == 'D' || how == 'S');
    CHECK_EQ(status, 0);
    /* The program goes: the server exits, and so does its spare. */
    close(report[1]);
    close(alive[1]);
    CHECK_EQ(waitpid(server, &status, 0), server);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char c;
    CHECK_EQ(read(report[0], &c, 1), 0); /* no spare holds the report pipe */
    close(report[0]);
}

/* Spares warm up while starts come apart. Once a spare that warmed up was
 * still at it when its request came (back to back), the next ones skip it
 * but for one in CMP_FS_PROBE_EVERY; once such a one was waiting for its
 * request, they warm up again. */
CTEST(fs_spares_warm_up_while_starts_come_apart)
{
    char addr[64];
    int addrlen, alive[2], report[2];
    CHECK_EQ(pipe(report), 0);
    unsigned char key[CMP_FS_KEY_LEN] = {4, 5};
    pid_t server = fs_server("warm", key, 100000, report, addr, &addrlen, alive);
    CHECK(server > 0);
    int64_t pid;
    int status, warm, warmed = 0, seen[2 * CMP_FS_PROBE_EVERY + 4];
    int n = 0;
    /* Back to back: every start right after the last one ended. */
    while (n < (int)(sizeof seen / sizeof *seen)) {
        char how =
                fs_start(addr, (size_t)addrlen, key, report[1], report[0], 0, &pid, &status, &warm);
        CHECK_EQ(status, 0);
        CHECK(how == 'S' || how == 'D');
        if (how == 'S')
            seen[n++] = warm;
    }
    /* The first spare warmed up (calm at first) and was late; then one in
     * CMP_FS_PROBE_EVERY, each late too. */
    for (int i = 0; i < n; i++)
        CHECK_EQ(seen[i], i % CMP_FS_PROBE_EVERY == 0);
    /* Apart: once the next probe has had time to warm up, spares warm up. */
    for (int i = 0; i < CMP_FS_PROBE_EVERY + 2; i++) {
        usleep(250000);
        char how =
                fs_start(addr, (size_t)addrlen, key, report[1], report[0], 0, &pid, &status, &warm);
        CHECK_EQ(status, 0);
        if (how == 'S' && warm)
            warmed++;
    }
    CHECK(warmed >= 2); /* the probe, and the ones after it */
    close(report[1]);
    close(alive[1]);
    CHECK_EQ(waitpid(server, &status, 0), server);
    close(report[0]);
}

/* A spare that has reached cmp_fs_take says so: the server's end of its
 * hand-off socket reads an end of file, and nothing before (the server
 * yields its CPU to the requester only then). Left without a request when
 * the server goes, it ends with CMP_EEOF. */
CTEST(fs_spare_says_when_it_waits)
{
    int alive[2], go[2];
    CHECK_EQ(pipe(alive), 0);
    CHECK_EQ(pipe(go), 0);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unsigned char key[CMP_FS_KEY_LEN] = {1};
    cmp_fs_server s;
    CHECK_EQ(cmp_fs_server_init(&s, listener, alive[0], key), CMP_OK);
    CHECK_EQ(cmp_fs_spare_open(&s), CMP_OK);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int bell, warm;
        int end = cmp_fs_in_spare(&s, &bell, &warm);
        char c;
        if (read(go[0], &c, 1) != 1) /* (still warming up until told) */
            _exit(1);
        cmp_fs_req req;
        _exit(cmp_fs_take(end, bell, &req) == CMP_EEOF ? 7 : 8);
    }
    cmp_fs_spare_forked(&s, pid);
    char b;
    usleep(20000);
    CHECK_EQ(recv(s.spare_sock, &b, 1, MSG_DONTWAIT), -1);
    CHECK_EQ(errno, EAGAIN);
    CHECK_EQ(write(go[1], "g", 1), 1);
    struct pollfd p = {.fd = s.spare_sock, .events = POLLIN};
    CHECK_EQ(poll(&p, 1, 10000), 1);
    CHECK_EQ(recv(s.spare_sock, &b, 1, MSG_DONTWAIT), 0);
    cmp_fs_in_child(&s); /* (closes our end: the server is gone) */
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7);
    close(alive[1]);
    close(go[0]);
    close(go[1]);
}

CTEST(place_fds_swaps_and_clears_cloexec)
{
    int a[2], b[2];
    CHECK_EQ(pipe2(a, O_CLOEXEC), 0);
    CHECK_EQ(pipe2(b, O_CLOEXEC), 0);
    /* Put a's write end where b's is and the other way round. */
    int fds[2] = {a[1], b[1]}, targets[2] = {b[1], a[1]};
    int ta = b[1], tb = a[1];
    CHECK_EQ(cmp_place_fds(fds, targets, 2), CMP_OK);
    CHECK_EQ(fcntl(ta, F_GETFD) & FD_CLOEXEC, 0);
    CHECK_EQ(fcntl(tb, F_GETFD) & FD_CLOEXEC, 0);
    CHECK_EQ(write(ta, "a", 1), 1);
    CHECK_EQ(write(tb, "b", 1), 1);
    char c = 0;
    CHECK_EQ(read(a[0], &c, 1), 1);
    CHECK_EQ(c, 'a');
    CHECK_EQ(read(b[0], &c, 1), 1);
    CHECK_EQ(c, 'b');
    close(a[0]);
    close(b[0]);
    close(ta);
    close(tb);
}

CTEST(proc_state_is_stable_and_sees_umask)
{
    unsigned char s1[CMP_PROC_STATE_MAX], s2[CMP_PROC_STATE_MAX];
    int n1 = cmp_proc_state(s1), n2 = cmp_proc_state(s2);
    CHECK(n1 > 0);
    CHECK_EQ(n1, n2);
    CHECK(memcmp(s1, s2, (size_t)n1) == 0);
    mode_t old = umask(077);
    n2 = cmp_proc_state(s2);
    umask(old);
    CHECK(n2 == n1 && memcmp(s1, s2, (size_t)n1) != 0);
}

int
main(void)
{
    return ctest_main();
}
