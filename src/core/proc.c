/* Processes: fork, spawn (exec), pidfds, waiting, parent-death handling. */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

int
cmp_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int
cmp_pidfd_kill(int pidfd, int sig)
{
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0 ? CMP_OK : CMP_ERRNO;
}

/* ------------------------------------------------------------------------ */
/* Parent death                                                             */

static void *
watch_parent_main(void *arg)
{
    int pidfd = (int)(intptr_t)arg;
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    for (;;) {
        int r = poll(&p, 1, -1);
        if (r > 0)
            break;
        if (r < 0 && errno != EINTR)
            break;          /* cannot watch any more: fail towards dying */
    }
    kill(getpid(), SIGKILL);
    return NULL;
}

int
cmp_watch_parent(int pidfd)
{
    pthread_attr_t attr;
    pthread_t tid;
    sigset_t all, old;
    int rc;

    if ((rc = pthread_attr_init(&attr)) != 0)
        goto fail;
    if ((rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED)) != 0 ||
        (rc = pthread_attr_setstacksize(&attr, 64 * 1024)) != 0) {
        pthread_attr_destroy(&attr);
        goto fail;
    }
    /* The watcher must never take a signal meant for the interpreter. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&tid, &attr, watch_parent_main, (void *)(intptr_t)pidfd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        goto fail;
    return CMP_OK;
fail:
    errno = rc;
    return CMP_ERRNO;
}

int
cmp_die_with_parent(pid_t expected_ppid)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        return CMP_ERRNO;
    if (getppid() != expected_ppid)     /* it died before the prctl */
        kill(getpid(), SIGKILL);
    return CMP_OK;
}

/* ------------------------------------------------------------------------ */
/* fork and spawn                                                           */

pid_t
cmp_fork(int die_with_parent, int parent_pidfd)
{
    pid_t parent = getpid();
    int main_thread = (pid_t)syscall(SYS_gettid) == parent;
    pid_t pid = fork();
    if (pid < 0)
        return CMP_ERRNO;
    if (pid == 0 && die_with_parent) {
        if (main_thread || parent_pidfd < 0) {
            if (cmp_die_with_parent(parent) != CMP_OK)
                _exit(70);
        }
        else {
            int fd = fcntl(parent_pidfd, F_DUPFD_CLOEXEC, 0);
            if (fd < 0 || cmp_watch_parent(fd) != CMP_OK)
                _exit(70);
        }
    }
    return pid;
}

pid_t
cmp_spawn(const char *path, char *const argv[], char *const envp[],
          const int *keep, size_t nkeep)
{
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int rc;

    if ((rc = posix_spawn_file_actions_init(&fa)) != 0) {
        errno = rc;
        return CMP_ERRNO;
    }
    for (size_t i = 0; i < nkeep; i++) {
        /* dup2(fd, fd) in a file action clears close-on-exec (glibc >= 2.29) */
        if ((rc = posix_spawn_file_actions_adddup2(&fa, keep[i], keep[i])) != 0)
            goto done;
    }
    rc = posix_spawn(&pid, path, &fa, NULL, argv, envp);
done:
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        errno = rc;
        return CMP_ERRNO;
    }
    return pid;
}

/* ------------------------------------------------------------------------ */
/* Waiting                                                                  */

int
cmp_wait_readable(int fd, int64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, cmp_poll_ms_left(deadline));
    if (r > 0)
        return CMP_OK;
    if (r == 0)
        return cmp_poll_ms_left(deadline) == 0 ? CMP_ETIMEDOUT : CMP_EINTR;
    return errno == EINTR ? CMP_EINTR : CMP_ERRNO;
}

int
cmp_reap(pid_t pid, int *exitcode)
{
    int status;
    pid_t r;
    do {
        r = waitpid(pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return CMP_ERRNO;
    if (r == 0)
        return CMP_EEMPTY;
    if (WIFSIGNALED(status))
        *exitcode = -WTERMSIG(status);
    else
        *exitcode = WEXITSTATUS(status);
    return CMP_OK;
}
