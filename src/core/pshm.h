/* Named POSIX shared memory (shm_open under /dev/shm), and the resource
 * tracker that unlinks the blocks a program created but never unlinked. */
#ifndef CMP_PSHM_H
#define CMP_PSHM_H

#include <stddef.h>

#include "cmp_core.h"

/* Open the block `name` (with its leading '/'): created exclusively with
 * `size` bytes, or attached, its size read back into *size. Returns a
 * close-on-exec fd or CMP_ERRNO. A block that was created but could not be
 * sized is unlinked again. */
int cmp_pshm_open(const char *name, int create, size_t *size);

/* Create a block under a fresh random name in the stdlib's format
 * ("/psm_" and 8 hex digits) written to name[0..CMP_PSHM_RANDOM_NAME_LEN].
 * Returns the fd or CMP_ERRNO. */
#define CMP_PSHM_RANDOM_NAME_LEN 13
int cmp_pshm_create_random(size_t size, char name[CMP_PSHM_RANDOM_NAME_LEN + 1]);

/* shm_unlink(name): CMP_OK or CMP_ERRNO. */
int cmp_pshm_unlink(const char *name);

/* Map [0, size) of fd shared, read-write, and close fd (whatever happens):
 * the address, or NULL with errno set. cmp_pshm_unmap undoes it. */
void *cmp_pshm_map_and_close(int fd, size_t size);
void cmp_pshm_unmap(void *addr, size_t size);

/* --------------------------------------------------------------------------
 * The tracker: a small process forked on first use that waits for every
 * process holding its pipe (the starter, the children forked after and those
 * started afresh, which attach to it) to exit, however they exit, then
 * unlinks the blocks still registered and prints the stdlib's warning.
 * Registering writes a slot in a table that the tracker shares (a memfd
 * mapping): no syscall, no message. A slot remembers the block's device and
 * inode, so a block recreated under the same name by someone else is never
 * unlinked by mistake. */

/* Start this process's tracker if it has none (children forked afterwards
 * share it). CMP_OK or CMP_ERRNO. */
int cmp_tracker_ensure(void);

/* What a registration unlinks: a block (/dev/shm/NAME) or a named semaphore
 * (registered under its file's name, "/sem.NAME"). The warning names it. */
enum { CMP_TRACK_SHM = 0, CMP_TRACK_SEM = 1, CMP_TRACK_KINDS = 2 };

/* Register the resource `name` of that kind, open on `fd`: a slot number,
 * CMP_EFULL when the table is full, or CMP_ERRNO. */
int cmp_tracker_add(const char *name, int fd, int kind);

/* Forget a registration (the block was unlinked by its owner). */
void cmp_tracker_remove(int slot);

/* Forget every registration of `name` of that kind (resource_tracker's
 * unregister); how many there were. */
int cmp_tracker_forget(const char *name, int kind);

/* Start the tracker, or, in the process that started it, a new one over
 * the same table if it died (killed): 0 if it was running or newly started,
 * 1 if it was relaunched, or CMP_ERRNO. Registrations are kept. */
int cmp_tracker_revive(void);

/* The write end of the tracker's pipe and its pid (-1, -1 if none runs). */
int cmp_tracker_fd(int *pid);

/* The descriptor of the tracker's table (a memfd, close-on-exec; -1 if
 * none runs): with the pipe and the pid, what a child started afresh (spawn,
 * fork server) needs to share its parent's tracker. */
int cmp_tracker_table_fd(void);

/* Make this process use a tracker started elsewhere: its table's memfd, the
 * write end of its pipe (both taken over: kept close-on-exec, or closed on
 * failure) and its pid. Holding the pipe, this process too keeps it waiting.
 * A process that started its own tracker, or already uses this one, keeps
 * it (and closes both); one it inherited (a child of the fork server has
 * the server's) is replaced. CMP_OK, or CMP_ERRNO (EINVAL: not a tracker's
 * table and pipe). */
int cmp_tracker_attach(int table_fd, int pipe_fd, int pid);

#endif /* CMP_PSHM_H */
