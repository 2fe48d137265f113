/* Unit tests of src/core/clock.c and proc.c. */
#include "ctest.h"
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
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
    char buf[8] = {0};
    CHECK(read(p[0], buf, sizeof buf - 1) == 3);
    CHECK(buf[0] == 'o' && buf[1] == 'k');
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(p[0]);
}

int
main(void)
{
    return ctest_main();
}
