/* Processes: fork, spawn (exec), pidfds, waiting, parent-death handling. */
#ifndef CMP_PROC_H
#define CMP_PROC_H

#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cmp_core.h"
#include "wire.h"

/* A pollable descriptor for `pid` (close-on-exec), or -1 with errno set. */
int cmp_pidfd_open(pid_t pid);

/* Send `sig` through a pidfd (no pid-reuse race). */
int cmp_pidfd_kill(int pidfd, int sig);

/* fork(). In the child, when `die_with_parent` is set, arrange for the child
 * to be killed (SIGKILL) once the parent process is gone: with
 * PR_SET_PDEATHSIG when the calling thread is the process's main thread,
 * else with a watcher thread on `parent_pidfd` (Linux sends the parent-death
 * signal when the forking *thread* exits, which for another thread may be
 * long before the process does). Returns the pid (0 in the child) or
 * CMP_ERRNO. The child half is async-signal-safe except for the watcher. */
pid_t cmp_fork(int die_with_parent, int parent_pidfd);

/* Start a detached thread that SIGKILLs this process when the process behind
 * `pidfd` exits. Takes ownership of `pidfd`. */
int cmp_watch_parent(int pidfd);

/* Make this process die with its parent `expected_ppid` (PR_SET_PDEATHSIG;
 * if the parent is already gone, die now). For use right after exec. */
int cmp_die_with_parent(pid_t expected_ppid);

/* Spawn `path` with `argv`/`envp`; the descriptors `keep[0..nkeep)` stay open
 * in the child under the same numbers, every close-on-exec one is closed.
 * Returns the pid or CMP_ERRNO. */
pid_t cmp_spawn(const char *path, char *const argv[], char *const envp[], const int *keep,
                size_t nkeep);

/* Spawn like cmp_spawn, but with exactly 0, 1, 2 and keep[i] as 3 + i open
 * in the child (the stdlib's close_fds): for a spare interpreter. */
pid_t cmp_spawn_clean(const char *path, char *const argv[], char *const envp[], const int *keep,
                      size_t nkeep);

/* What a process started now inherits besides its environment and working
 * directory, as bytes to compare: credentials, umask, rlimits, nice value,
 * CPU affinity, the calling thread's signal mask, the ignored signals,
 * no_new_privs, personality, and which of 0, 1, 2 are open and terminals.
 * Fills buf (CMP_PROC_STATE_MAX bytes); returns the length or CMP_ERRNO. */
#define CMP_PROC_STATE_MAX 4096
int cmp_proc_state(unsigned char *buf);

/* Make descriptor targets[i] refer to what fds[i] refers to (inheritable, as
 * after exec), for i < n, and close fds[]; a descriptor already at a target
 * number is replaced. CMP_OK or CMP_ERRNO. */
int cmp_place_fds(const int *fds, const int *targets, int n);

/* Wait until `fd` is readable or `deadline` passes: CMP_OK, CMP_ETIMEDOUT,
 * CMP_EINTR or CMP_ERRNO. */
int cmp_wait_readable(int fd, int64_t deadline);

/* Reap `pid` if it has ended. CMP_OK with *exitcode set (the exit status, or
 * -signal), CMP_EEMPTY while it runs, CMP_ERRNO (ECHILD: reaped elsewhere). */
int cmp_reap(pid_t pid, int *exitcode);

/* ------------------------------------------------------------------------ */
/* The fork server's protocol                                                */
/*
 * A request is one connection to the server's listening Unix stream socket.
 * Its first bytes are a cmp_fs_header, sent with one sendmsg() that carries
 * the descriptors the child gets (SCM_RIGHTS) and as much of the payload as
 * fits; the rest of the payload follows. The server checks the header (the
 * peer's uid, the magic, the key, compared in constant time), forks, and
 * the child reads the payload from the connection itself, so the server
 * never copies it. The answers are 8-byte signed little-endian integers:
 * first the child's pid plus CMP_FS_PID_TAG (or -errno if fork failed),
 * then its exit code (-signal if a signal ended it), which the server
 * sends once it has reaped the child. A request handed to a spare is
 * answered once the spare has it (a server killed then loses no child),
 * and the child the spare becomes sends its exit code itself as it ends
 * (the server's follows it once reaped). Were the server gone between
 * handing a request over and answering, the spare answers with its pid:
 * a requester reads the pid from the first answer and the exit code from
 * the first answer after it that is not a pid.
 */

#define CMP_FS_KEY_LEN 32
#define CMP_FS_PID_TAG ((int64_t)1 << 40) /* above any pid, exit code or -errno */
#define CMP_FS_MAGIC 0x31534d43u          /* "CMS1" */

typedef struct {
    uint32_t magic;
    uint32_t reserved;
    uint64_t size; /* payload bytes after the header */
    unsigned char key[CMP_FS_KEY_LEN];
} cmp_fs_header;

/* A request the server accepted: the connection, its descriptors, and the
 * payload size the child reads from the connection. */
typedef struct {
    int conn;
    int nfds;
    uint64_t size;
    int fds[CMP_WIRE_MAX_FDS];
} cmp_fs_req;

/* Send header, descriptors and payload on connected socket fd (blocking;
 * EINTR retried). CMP_OK, CMP_EEOF (the peer is gone), CMP_ERRNO. */
int cmp_fs_send(int fd, const unsigned char key[CMP_FS_KEY_LEN], const void *payload, size_t size,
                const int *fds, int nfds);

/* Receive a header and its descriptors from fd, blocking: CMP_OK with
 * req->size, req->fds set (req->conn = fd), CMP_EEOF, CMP_EBADMSG, CMP_ERRNO.
 * The payload follows on fd (cmp_read_exact). */
int cmp_fs_recv(int fd, cmp_fs_req *req);

/* Send a request on a new connection to `addr` (a sockaddr_un path of
 * `addrlen` bytes, abstract if it starts with NUL) and wait for the pid.
 * When `listener_pid` > 0 the socket must have been listened on by that
 * process (SO_PEERCRED), so a stranger that took over the address after
 * the server died learns nothing. On CMP_OK, *sock is the connection (the
 * exit code arrives on it) and *pid the child's. CMP_EEOF: the server
 * closed the connection (it refused or died); CMP_ERRNO otherwise (fork
 * failing in the server is reported with its errno). EINTR is retried. */
int cmp_fs_request(const char *addr, size_t addrlen, pid_t listener_pid,
                   const unsigned char key[CMP_FS_KEY_LEN], const void *payload, size_t size,
                   const int *fds, int nfds, int *sock, int64_t *pid);

typedef struct {
    pid_t pid;
    int conn;
} cmp_fs_child;

/* What cmp_fs_next returns when the server should fork a spare: a child
 * forked ahead of the next request, which waits for it (cmp_fs_take) while
 * the server goes on. The next valid request is handed to it, so neither
 * the fork nor the child's own start-up is paid by the requester. */
#define CMP_FS_SPARE 1

/* A spare is told to warm up (take ahead the first steps of every child)
 * while starts come apart. When a spare that warmed up was still at it
 * when its request came, starts come back to back: the warm-up then only
 * adds CPU the starts need (most of what it does, the child does again),
 * so spares skip it, but one in this many, which tells when starts come
 * apart again. */
#define CMP_FS_PROBE_EVERY 8

/* The server's state: what it listens on and what it waits for. */
typedef struct {
    int listener, alive, sigfd;
    unsigned char key[CMP_FS_KEY_LEN];
    sigset_t oldmask; /* the mask before SIGCHLD was blocked */
    int *pending;     /* accepted, header not yet read */
    size_t npending, cap_pending;
    cmp_fs_child *kids; /* forked, not yet reaped */
    size_t nkids, cap_kids;
    pid_t spare;     /* waiting for a request, or 0 */
    int spare_sock;  /* our end of its hand-off socket, or -1 */
    int spare_end;   /* its end, until it is forked, or -1 */
    int spare_bell;  /* an eventfd: it takes its request when this rings */
    int calm;        /* starts come apart (the last spare that warmed up was
                      * waiting when its request came); 1 at first */
    int cold_spares; /* spares told not to warm up since the last that was
                      * (0: the spare was told to) */
    int want_spare;  /* a request was served since the last spare */
    struct pollfd *pfds;
    size_t cap_pfds;
} cmp_fs_server;

/* Take over `listener` and `alive` (EOF on it: the program is gone) and block
 * SIGCHLD into a signalfd. CMP_OK or CMP_ERRNO. */
int cmp_fs_server_init(cmp_fs_server *s, int listener, int alive,
                       const unsigned char key[CMP_FS_KEY_LEN]);

/* Serve until a valid request arrives that no spare can take (CMP_OK, *req
 * filled: fork now), a spare is wanted (CMP_FS_SPARE: cmp_fs_spare_open,
 * fork, then cmp_fs_spare_forked or cmp_fs_in_spare), the program is gone
 * (CMP_EEOF), a signal arrives (CMP_EINTR) or an error (CMP_ERRNO).
 * Requests a spare takes are answered here; children that ended meanwhile
 * are reaped and reported. */
int cmp_fs_next(cmp_fs_server *s, cmp_fs_req *req);

/* Before forking a spare: its hand-off socket. CMP_OK or CMP_ERRNO (then
 * go on without one). */
int cmp_fs_spare_open(cmp_fs_server *s);

/* In the server after forking a spare (pid < 0: fork failed). */
void cmp_fs_spare_forked(cmp_fs_server *s, pid_t pid);

/* In the spare: cmp_fs_in_child, keeping only its end of the hand-off
 * socket, which it returns, and its bell (*bell); *warm: whether to warm up
 * (CMP_FS_PROBE_EVERY). */
int cmp_fs_in_spare(cmp_fs_server *s, int *bell, int *warm);

/* In a spare: say that we wait (shutting `end` down for writing), and wait
 * for the request the server hands over on `end` (it rings `bell` once it
 * has answered the requester; gone before, it leaves that to us).
 * CMP_OK (*req as a forked child gets it),
 * CMP_EEOF (the server is gone: exit), CMP_EBADMSG, CMP_ERRNO. EINTR is
 * retried. */
int cmp_fs_take(int end, int bell, cmp_fs_req *req);

/* In the server after fork(): answer the request with `pid` (or -errno when
 * pid < 0), keep its connection for the exit code, close its descriptors. */
void cmp_fs_forked(cmp_fs_server *s, cmp_fs_req *req, pid_t pid, int err);

/* In the child: close everything of the server's (not req's descriptors)
 * and restore the signal mask. */
void cmp_fs_in_child(cmp_fs_server *s);

/* Close every descriptor from 3 up but `keep` (>= 3). */
void cmp_close_all_but(int keep);

/* In a child a spare became: end with exit status `code`, after closing
 * every descriptor but 0-2 and `conn`, its request's connection, and then
 * telling the requester on it, as the server would once it has reaped us:
 * join() need not wait for the kernel to free this process's memory. */
void cmp_fs_child_exit(int conn, int code) __attribute__((noreturn));

/* Read exactly n bytes from fd (EINTR retried). CMP_OK, CMP_EEOF, CMP_ERRNO. */
int cmp_read_exact(int fd, void *buf, size_t n);

#endif /* CMP_PROC_H */
