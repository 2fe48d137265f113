/* Processes: fork, spawn (exec), pidfds, waiting, parent-death handling. */
#ifndef CMP_PROC_H
#define CMP_PROC_H

#include <stddef.h>
#include <sys/types.h>

#include "cmp_core.h"

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
pid_t cmp_spawn(const char *path, char *const argv[], char *const envp[],
                const int *keep, size_t nkeep);

/* Wait until `fd` is readable or `deadline` passes: CMP_OK, CMP_ETIMEDOUT,
 * CMP_EINTR or CMP_ERRNO. */
int cmp_wait_readable(int fd, int64_t deadline);

/* Reap `pid` if it has ended. CMP_OK with *exitcode set (the exit status, or
 * -signal), CMP_EEMPTY while it runs, CMP_ERRNO (ECHILD: reaped elsewhere). */
int cmp_reap(pid_t pid, int *exitcode);

#endif /* CMP_PROC_H */
