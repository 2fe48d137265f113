/* Processes: fork, spawn (exec), pidfds, waiting, parent-death handling. */
#include "proc.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
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
            break; /* cannot watch any more: fail towards dying */
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
    if ((rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED)) != 0
        || (rc = pthread_attr_setstacksize(&attr, 64 * 1024)) != 0) {
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
    if (getppid() != expected_ppid) /* it died before the prctl */
        kill(getpid(), SIGKILL);
    return CMP_OK;
}

/* ------------------------------------------------------------------------ */
/* fork and spawn                                                           */

pid_t
cmp_fork(int die_with_parent, int parent_pidfd)
{
    /* Only a daemon needs to know who forked it, and from which thread. */
    pid_t parent = die_with_parent ? getpid() : 0;
    int main_thread = die_with_parent && (pid_t)syscall(SYS_gettid) == parent;
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

/* Spawn with the file actions `fa` that the caller has added to (rc: the
 * first failure to add one, or 0), then destroy them. */
static pid_t
spawn_with(posix_spawn_file_actions_t *fa, int rc, const char *path, char *const argv[],
           char *const envp[])
{
    pid_t pid;

    if (rc == 0)
        rc = posix_spawn(&pid, path, fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(fa);
    if (rc != 0) {
        errno = rc;
        return CMP_ERRNO;
    }
    return pid;
}

pid_t
cmp_spawn(const char *path, char *const argv[], char *const envp[], const int *keep, size_t nkeep)
{
    posix_spawn_file_actions_t fa;
    int rc;

    if ((rc = posix_spawn_file_actions_init(&fa)) != 0) {
        errno = rc;
        return CMP_ERRNO;
    }
    /* dup2(fd, fd) in a file action clears close-on-exec (glibc >= 2.29) */
    for (size_t i = 0; i < nkeep && rc == 0; i++)
        rc = posix_spawn_file_actions_adddup2(&fa, keep[i], keep[i]);
    return spawn_with(&fa, rc, path, argv, envp);
}

pid_t
cmp_spawn_clean(const char *path, char *const argv[], char *const envp[], const int *keep,
                size_t nkeep)
{
    posix_spawn_file_actions_t fa;
    int rc;

    if ((rc = posix_spawn_file_actions_init(&fa)) != 0) {
        errno = rc;
        return CMP_ERRNO;
    }
    /* Move the kept descriptors above every target first, so placing one
     * never overwrites another still to be placed. */
    int high = 3 + (int)nkeep;
    for (size_t i = 0; i < nkeep; i++)
        if (keep[i] >= high)
            high = keep[i] + 1;
    for (size_t i = 0; i < nkeep && rc == 0; i++)
        rc = posix_spawn_file_actions_adddup2(&fa, keep[i], high + (int)i);
    for (size_t i = 0; i < nkeep && rc == 0; i++)
        rc = posix_spawn_file_actions_adddup2(&fa, high + (int)i, 3 + (int)i);
    if (rc == 0)
        rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3 + (int)nkeep);
    return spawn_with(&fa, rc, path, argv, envp);
}

/* ------------------------------------------------------------------------ */
/* What a spawned process inherits                                           */

static unsigned char *
put(unsigned char *p, const unsigned char *end, const void *v, size_t n)
{
    if (p == NULL || (size_t)(end - p) < n)
        return NULL;
    memcpy(p, v, n);
    return p + n;
}

static int
read_umask(void)
{
    char buf[2048];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *u = strstr(buf, "\nUmask:");
    return u ? (int)strtol(u + 7, NULL, 8) : -1;
}

int
cmp_proc_state(unsigned char *buf)
{
    unsigned char *p = buf, *end = buf + CMP_PROC_STATE_MAX;
    uid_t uids[3];
    gid_t gids[3], groups[64];
    if (getresuid(&uids[0], &uids[1], &uids[2]) < 0 || getresgid(&gids[0], &gids[1], &gids[2]) < 0)
        return CMP_ERRNO;
    p = put(p, end, uids, sizeof(uids));
    p = put(p, end, gids, sizeof(gids));
    int ng = getgroups(64, groups);
    if (ng >= 0)
        p = put(p, end, groups, sizeof(gid_t) * (size_t)ng);
    int v = read_umask();
    p = put(p, end, &v, sizeof(v));
    for (int r = 0; r < RLIM_NLIMITS; r++) {
        struct rlimit rl = {0, 0};
        getrlimit(r, &rl);
        p = put(p, end, &rl, sizeof(rl));
    }
    errno = 0;
    v = getpriority(PRIO_PROCESS, 0);
    p = put(p, end, &v, sizeof(v));
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    sched_getaffinity(0, sizeof(cpus), &cpus);
    p = put(p, end, &cpus, sizeof(cpus));
    sigset_t mask;
    sigemptyset(&mask);
    pthread_sigmask(SIG_BLOCK, NULL, &mask);
    uint64_t blocked = 0, ignored = 0; /* (glibc's sigset_t has slack) */
    for (int sig = 1; sig < 64; sig++) {
        struct sigaction sa;
        if (sigismember(&mask, sig) == 1)
            blocked |= (uint64_t)1 << sig;
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN)
            ignored |= (uint64_t)1 << sig;
    }
    p = put(p, end, &blocked, sizeof(blocked));
    p = put(p, end, &ignored, sizeof(ignored));
    v = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    p = put(p, end, &v, sizeof(v));
    v = personality(0xffffffff);
    p = put(p, end, &v, sizeof(v));
    for (int fd = 0; fd < 3; fd++) {
        v = fcntl(fd, F_GETFD) < 0 ? -1 : isatty(fd);
        p = put(p, end, &v, sizeof(v));
    }
    if (p == NULL) {
        errno = ENOBUFS;
        return CMP_ERRNO;
    }
    return (int)(p - buf);
}

int
cmp_place_fds(const int *fds, const int *targets, int n)
{
    int high = 3, moved[CMP_WIRE_MAX_FDS];
    if (n > CMP_WIRE_MAX_FDS) {
        errno = EINVAL;
        return CMP_ERRNO;
    }
    for (int i = 0; i < n; i++)
        if (targets[i] >= high)
            high = targets[i] + 1;
    /* Out of the way of every target first, then onto the targets. */
    for (int i = 0; i < n; i++) {
        moved[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, high);
        if (moved[i] < 0) {
            int saved = errno;
            while (i-- > 0)
                close(moved[i]);
            errno = saved;
            return CMP_ERRNO;
        }
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    int st = CMP_OK;
    for (int i = 0; i < n; i++) {
        if (st == CMP_OK && dup2(moved[i], targets[i]) < 0)
            st = CMP_ERRNO;
        int saved = errno;
        close(moved[i]);
        errno = saved;
    }
    return st;
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

/* ------------------------------------------------------------------------ */
/* Fork server: the requesting side                                         */

int
cmp_read_exact(int fd, void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return CMP_ERRNO;
        if (r == 0)
            return CMP_EEOF;
        p += r;
        n -= (size_t)r;
    }
    return CMP_OK;
}

static int
send_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno == EPIPE || errno == ECONNRESET ? CMP_EEOF : CMP_ERRNO;
        p += w;
        n -= (size_t)w;
    }
    return CMP_OK;
}

static int
fs_connect(const char *addr, size_t addrlen, pid_t listener_pid)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (addrlen > sizeof(sa.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sa.sun_path, addr, addrlen);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + addrlen);
    int r;
    do {
        r = connect(fd, (struct sockaddr *)&sa, len);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EISCONN)
        goto fail;
    if (listener_pid > 0) {
        struct ucred cred;
        socklen_t clen = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0)
            goto fail;
        if (cred.pid != listener_pid || cred.uid != geteuid()) {
            errno = ECONNREFUSED;
            goto fail;
        }
    }
    return fd;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int
cmp_fs_send(int fd, const unsigned char key[CMP_FS_KEY_LEN], const void *payload, size_t size,
            const int *fds, int nfds)
{
    cmp_fs_header h = {.magic = CMP_FS_MAGIC, .size = size};
    memcpy(h.key, key, CMP_FS_KEY_LEN);
    /* Header, descriptors and the first part of the payload in one call. */
    struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)payload, size}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = size > 0 ? 2 : 1};
    cmp_cmsg_space cmsg;
    if (nfds > 0)
        cmp_wire_put_fds(&m, &cmsg, fds, nfds);
    ssize_t w;
    do {
        w = sendmsg(fd, &m, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    if (w < 0)
        return errno == EPIPE || errno == ECONNRESET ? CMP_EEOF : CMP_ERRNO;
    int st = CMP_OK;
    if ((size_t)w < sizeof(h))
        st = send_all(fd, (const unsigned char *)&h + w, sizeof(h) - (size_t)w);
    if (st == CMP_OK) {
        size_t done = (size_t)w > sizeof(h) ? (size_t)w - sizeof(h) : 0;
        st = send_all(fd, (const unsigned char *)payload + done, size - done);
    }
    return st;
}

int
cmp_fs_recv(int fd, cmp_fs_req *req)
{
    cmp_fs_header h;
    size_t have = 0;
    req->conn = fd;
    req->nfds = 0;
    while (have < sizeof(h)) {
        struct iovec iov = {(unsigned char *)&h + have, sizeof(h) - have};
        cmp_cmsg_space cmsg;
        struct msghdr m = {.msg_iov = &iov,
                           .msg_iovlen = 1,
                           .msg_control = cmsg.buf,
                           .msg_controllen = sizeof(cmsg.buf)};
        ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            for (int i = 0; i < req->nfds; i++)
                close(req->fds[i]);
            req->nfds = 0;
            return n == 0 ? CMP_EEOF : CMP_ERRNO;
        }
        cmp_wire_take_fds(&m, req->fds, &req->nfds, CMP_WIRE_MAX_FDS);
        have += (size_t)n;
    }
    if (h.magic != CMP_FS_MAGIC) {
        for (int i = 0; i < req->nfds; i++)
            close(req->fds[i]);
        req->nfds = 0;
        return CMP_EBADMSG;
    }
    req->size = h.size;
    return CMP_OK;
}

int
cmp_fs_request(const char *addr, size_t addrlen, pid_t listener_pid,
               const unsigned char key[CMP_FS_KEY_LEN], const void *payload, size_t size,
               const int *fds, int nfds, int *sock, int64_t *pid)
{
    int fd = fs_connect(addr, addrlen, listener_pid);
    if (fd < 0)
        return CMP_ERRNO;
    int st = cmp_fs_send(fd, key, payload, size, fds, nfds);
    /* Even when the child stopped reading early, the pid comes. */
    unsigned char buf[8];
    if (st == CMP_OK || st == CMP_EEOF) {
        st = cmp_read_exact(fd, buf, sizeof(buf));
        if (st == CMP_ERRNO && errno == ECONNRESET)
            st = CMP_EEOF; /* closed with our bytes unread: refused */
    }
    if (st != CMP_OK) {
        int saved = errno;
        close(fd);
        errno = saved;
        return st;
    }
    int64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | buf[i];
    if (v <= CMP_FS_PID_TAG) {
        close(fd);
        if (v >= 0)
            return CMP_EBADMSG;
        errno = (int)-v;
        return CMP_ERRNO;
    }
    *sock = fd;
    *pid = v - CMP_FS_PID_TAG;
    return CMP_OK;
}

/* ------------------------------------------------------------------------ */
/* Fork server: the server                                                  */

static int
grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return CMP_OK;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need)
        n *= 2;
    void *p = realloc(*arr, n * elem);
    if (p == NULL) {
        errno = ENOMEM;
        return CMP_ERRNO;
    }
    *arr = p;
    *cap = n;
    return CMP_OK;
}

int
cmp_fs_server_init(cmp_fs_server *s, int listener, int alive,
                   const unsigned char key[CMP_FS_KEY_LEN])
{
    memset(s, 0, sizeof(*s));
    s->spare_sock = s->spare_end = s->spare_bell = -1;
    s->calm = 1;
    s->listener = listener;
    s->alive = alive;
    memcpy(s->key, key, CMP_FS_KEY_LEN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    int rc = pthread_sigmask(SIG_BLOCK, &chld, &s->oldmask);
    if (rc != 0) {
        errno = rc;
        return CMP_ERRNO;
    }
    s->sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->sigfd < 0) {
        int saved = errno;
        pthread_sigmask(SIG_SETMASK, &s->oldmask, NULL);
        errno = saved;
        return CMP_ERRNO;
    }
    return CMP_OK;
}

static void
put_int64(unsigned char out[8], int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(u >> (8 * i));
}

/* A best-effort 8-byte answer: a requester that went away misses it. */
static void
answer(int conn, int64_t v)
{
    unsigned char buf[8];
    put_int64(buf, v);
    ssize_t w;
    do {
        w = send(conn, buf, sizeof(buf), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (w < 0 && errno == EINTR);
}

/* Forget the spare (gone, or given its request). */
static void
drop_spare(cmp_fs_server *s)
{
    close(s->spare_sock);
    close(s->spare_bell);
    s->spare_sock = s->spare_bell = -1;
    s->spare = 0;
}

static void
reap_children(cmp_fs_server *s)
{
    struct signalfd_siginfo si;
    while (read(s->sigfd, &si, sizeof(si)) > 0)
        ;
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        int code = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
        if (pid == s->spare) { /* it died waiting: the next request is forked for */
            drop_spare(s);
            continue;
        }
        for (size_t i = 0; i < s->nkids; i++) {
            if (s->kids[i].pid == pid) {
                answer(s->kids[i].conn, code);
                close(s->kids[i].conn);
                s->kids[i] = s->kids[--s->nkids];
                break;
            }
        }
    }
}

/* After answering with `pid`: the child has the request's descriptors;
 * keep its connection for the exit code. */
static void
keep_child(cmp_fs_server *s, cmp_fs_req *req, pid_t pid)
{
    for (int i = 0; i < req->nfds; i++)
        close(req->fds[i]);
    req->nfds = 0;
    CMP_ASSERT(s->nkids < s->cap_kids); /* cmp_fs_next made room */
    s->kids[s->nkids++] = (cmp_fs_child){.pid = pid, .conn = req->conn};
}

static int
keys_equal(const unsigned char *a, const unsigned char *b)
{
    unsigned char diff = 0; /* constant time: no early exit */
    for (size_t i = 0; i < CMP_FS_KEY_LEN; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* Read the header of pending connection `conn`: CMP_OK and *req filled, or
 * CMP_EBADMSG (refused: the caller closes it). Never blocks. */
static int
read_request(cmp_fs_server *s, int conn, cmp_fs_req *req)
{
    struct ucred cred;
    socklen_t clen = sizeof(cred);
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 || cred.uid != geteuid())
        return CMP_EBADMSG;
    cmp_fs_header h;
    struct iovec iov = {&h, sizeof(h)};
    cmp_cmsg_space cmsg;
    struct msghdr m = {.msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = cmsg.buf,
                       .msg_controllen = sizeof(cmsg.buf)};
    ssize_t n;
    do {
        n = recvmsg(conn, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    req->conn = conn;
    req->nfds = 0;
    if (n > 0)
        cmp_wire_take_fds(&m, req->fds, &req->nfds, CMP_WIRE_MAX_FDS);
    if (n == (ssize_t)sizeof(h) && !(m.msg_flags & MSG_CTRUNC) && h.magic == CMP_FS_MAGIC
        && keys_equal(h.key, s->key)) {
        req->size = h.size;
        return CMP_OK;
    }
    for (int i = 0; i < req->nfds; i++)
        close(req->fds[i]);
    req->nfds = 0;
    return CMP_EBADMSG;
}

/* Whether the spare had done all it does ahead and was waiting for a
 * request: it says so by shutting down its side of the hand-off socket for
 * writing (an end of file to read here; no data, which closing our side
 * unread would turn into a reset of its side). */
static int
spare_was_waiting(cmp_fs_server *s)
{
    char b;
    return recv(s->spare_sock, &b, 1, MSG_DONTWAIT) == 0;
}

/* Give request `req` (with room for one more descriptor) to the spare:
 * its connection first, then its descriptors, after a header that says how
 * much payload follows on the connection. CMP_OK, or CMP_ERRNO (the spare
 * is gone). */
static int
hand_off(cmp_fs_server *s, const cmp_fs_req *req)
{
    int fds[CMP_WIRE_MAX_FDS];
    fds[0] = req->conn;
    memcpy(fds + 1, req->fds, sizeof(int) * (size_t)req->nfds);
    cmp_fs_header h = {.magic = CMP_FS_MAGIC, .size = req->size};
    struct iovec iov = {&h, sizeof(h)};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    cmp_cmsg_space cmsg;
    cmp_wire_put_fds(&m, &cmsg, fds, req->nfds + 1);
    ssize_t w;
    do {
        w = sendmsg(s->spare_sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (w < 0 && errno == EINTR);
    return w == (ssize_t)sizeof(h) ? CMP_OK : CMP_ERRNO;
}

int
cmp_fs_next(cmp_fs_server *s, cmp_fs_req *req)
{
    for (;;) {
        if (s->want_spare && s->spare == 0) {
            s->want_spare = 0;
            return CMP_FS_SPARE;
        }
        size_t n = 3 + s->npending;
        if (grow((void **)&s->pfds, &s->cap_pfds, n, sizeof(*s->pfds)) != CMP_OK
            || grow((void **)&s->kids, &s->cap_kids, s->nkids + 1, sizeof(*s->kids)) != CMP_OK)
            return CMP_ERRNO;
        struct pollfd *p = s->pfds;
        p[0] = (struct pollfd){.fd = s->alive, .events = POLLIN};
        p[1] = (struct pollfd){.fd = s->sigfd, .events = POLLIN};
        p[2] = (struct pollfd){.fd = s->listener, .events = POLLIN};
        for (size_t i = 0; i < s->npending; i++)
            p[3 + i] = (struct pollfd){.fd = s->pending[i], .events = POLLIN};
        int r = poll(p, (nfds_t)n, -1);
        if (r < 0)
            return errno == EINTR ? CMP_EINTR : CMP_ERRNO;
        if (p[0].revents) {
            if (s->spare > 0) { /* not left behind, not even as a zombie */
                kill(s->spare, SIGKILL);
                while (waitpid(s->spare, NULL, 0) < 0 && errno == EINTR)
                    ;
                drop_spare(s);
            }
            return CMP_EEOF;
        }
        if (p[1].revents)
            reap_children(s);
        /* Pending connections first: their requesters are already waiting. */
        for (size_t i = s->npending; i-- > 0;) {
            if (!p[3 + i].revents)
                continue;
            int conn = s->pending[i];
            s->pending[i] = s->pending[--s->npending];
            if (read_request(s, conn, req) != CMP_OK) {
                close(conn);
                continue;
            }
            s->want_spare = 1;
            if (s->spare > 0 && req->nfds < CMP_WIRE_MAX_FDS) {
                /* The spare becomes this request's child. The request is
                 * queued on the spare's socket before its pid is answered
                 * (were we killed after answering, the child would still
                 * run, as a forked one does), but the spare sleeps until
                 * its bell rings, after the answer: woken sooner, it would
                 * take this CPU before the requester heard from us. */
                pid_t pid = s->spare;
                int bell = s->spare_bell, warmed = s->cold_spares == 0;
                int idle = warmed && spare_was_waiting(s), st = hand_off(s, req);
                if (st == CMP_OK) {
                    if (warmed)
                        s->calm = idle;
                    answer(req->conn, CMP_FS_PID_TAG + pid);
                    uint64_t one = 1;
                    ssize_t w = write(bell, &one, sizeof(one)); /* (a fresh eventfd takes it) */
                    (void)w;
                    drop_spare(s);
                    keep_child(s, req, pid);
                    s->want_spare = 0;
                    /* Woken by its request, we likely took the
                     * requester's CPU. When starts come apart, let the
                     * requester have it back for its pid before we fork the
                     * next spare there; back to back, the next spare is
                     * wanted at once. */
                    if (warmed && idle)
                        sched_yield();
                    return CMP_FS_SPARE; /* the next one */
                }
                drop_spare(s);
                kill(pid, SIGKILL); /* gone or going: reaped unrecorded */
            }
            return CMP_OK; /* fork for it; cmp_fs_forked has room to record it */
        }
        if (p[2].revents) {
            int conn = accept4(s->listener, NULL, NULL, SOCK_CLOEXEC);
            if (conn >= 0) {
                if (grow((void **)&s->pending, &s->cap_pending, s->npending + 1, sizeof(int))
                    != CMP_OK) {
                    close(conn);
                    return CMP_ERRNO;
                }
                s->pending[s->npending++] = conn;
            }
            else if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED && errno != EMFILE
                     && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM && errno != EPROTO)
                return CMP_ERRNO;
        }
    }
}

void
cmp_fs_forked(cmp_fs_server *s, cmp_fs_req *req, pid_t pid, int err)
{
    if (pid < 0) {
        for (int i = 0; i < req->nfds; i++)
            close(req->fds[i]);
        req->nfds = 0;
        answer(req->conn, -(int64_t)err);
        close(req->conn);
        return;
    }
    answer(req->conn, CMP_FS_PID_TAG + pid);
    keep_child(s, req, pid);
}

int
cmp_fs_spare_open(cmp_fs_server *s)
{
    int sv[2];
    /* Non-blocking: the server never waits on it, and the spare reads it
     * only once poll() says the bell rang or the server is gone. */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
        return CMP_ERRNO;
    int bell = eventfd(0, EFD_CLOEXEC);
    if (bell < 0) {
        int saved = errno;
        close(sv[0]);
        close(sv[1]);
        errno = saved;
        return CMP_ERRNO;
    }
    s->spare_sock = sv[0];
    s->spare_end = sv[1];
    s->spare_bell = bell;
    if (s->calm || ++s->cold_spares >= CMP_FS_PROBE_EVERY)
        s->cold_spares = 0; /* (this one warms up) */
    return CMP_OK;
}

void
cmp_fs_spare_forked(cmp_fs_server *s, pid_t pid)
{
    close(s->spare_end);
    s->spare_end = -1;
    if (pid < 0)
        drop_spare(s);
    else
        s->spare = pid;
}

int
cmp_fs_in_spare(cmp_fs_server *s, int *bell, int *warm)
{
    int end = s->spare_end;
    *bell = s->spare_bell;
    *warm = s->cold_spares == 0;
    s->spare_end = s->spare_bell = -1;
    cmp_fs_in_child(s);
    return end;
}

int
cmp_fs_take(int end, int bell, cmp_fs_req *req)
{
    /* Until the bell rings (the server has answered the requester), or the
     * server is gone, having handed the request over or not: not on the
     * request's arrival. */
    struct pollfd p[2] = {{.fd = bell, .events = POLLIN}, {.fd = end, .events = 0}};
    shutdown(end, SHUT_WR); /* (spare_was_waiting) */
    while (poll(p, 2, -1) < 0)
        if (errno != EINTR)
            return CMP_ERRNO;
    int rung = p[0].revents != 0;
    int st = cmp_fs_recv(end, req); /* (end does not block) */
    if (st == CMP_ERRNO && errno == EAGAIN)
        st = CMP_EEOF; /* the server is gone, and the request was not for us */
    if (st != CMP_OK)
        return st;
    if (req->nfds < 1)
        return CMP_EBADMSG;
    req->conn = req->fds[0];
    req->nfds--;
    memmove(req->fds, req->fds + 1, sizeof(int) * (size_t)req->nfds);
    if (!rung) /* the server died before answering (or before ringing) */
        answer(req->conn, CMP_FS_PID_TAG + getpid());
    return CMP_OK;
}

void
cmp_close_all_but(int keep)
{
    if (keep > 3)
        syscall(SYS_close_range, 3u, (unsigned)keep - 1, 0u);
    syscall(SYS_close_range, (unsigned)keep + 1, ~0u, 0u);
}

void
cmp_fs_child_exit(int conn, int code)
{
    cmp_close_all_but(conn);
    answer(conn, code & 0xff);
    _exit(code);
}

void
cmp_fs_in_child(cmp_fs_server *s)
{
    if (s->spare_sock >= 0)
        close(s->spare_sock);
    if (s->spare_end >= 0)
        close(s->spare_end);
    if (s->spare_bell >= 0)
        close(s->spare_bell);
    close(s->listener);
    close(s->alive);
    close(s->sigfd);
    for (size_t i = 0; i < s->npending; i++)
        close(s->pending[i]);
    for (size_t i = 0; i < s->nkids; i++)
        close(s->kids[i].conn);
    free(s->pending);
    free(s->kids);
    free(s->pfds);
    pthread_sigmask(SIG_SETMASK, &s->oldmask, NULL);
    memset(s, 0, sizeof(*s));
}
