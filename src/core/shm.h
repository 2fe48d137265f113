/* Shared memory for internal state: memfd-backed segments (no names in
 * /dev/shm) and a small-object arena over them.
 *
 * Small allocations (up to CMP_SHM_SMALL_MAX bytes) are runs of 64-byte
 * blocks in 64 KiB arena segments, so a lock costs one cache line of shared
 * memory and a thousand locks share one descriptor and one mapping. Larger
 * ones get a segment of their own. Blocks are zero-filled when allocated.
 *
 * Children created by fork inherit every mapping. Another process maps a
 * block with cmp_shm_attach() given the segment's descriptor (passed at
 * spawn) and the block's offset; mappings are cached per segment.
 *
 * Reuse: a block goes back to the arena when it is freed in the process that
 * allocated it, unless another process may still be using it -- it was alive
 * when this process forked, or it was handed out with cmp_shm_share().
 * Such a block stays reserved until the allocating process exits. A large
 * block (a segment of its own) is never reused, so freeing it in the
 * allocating process always unmaps and closes it there; other processes
 * keep their own mappings.
 *
 * Allocation and freeing are not thread-safe: callers serialize them (the
 * binding holds the GIL). */
#ifndef CMP_SHM_H
#define CMP_SHM_H

#include "cmp_core.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CMP_SHM_BLOCK 64              /* arena granule and alignment */
#define CMP_SHM_SEGMENT (64 * 1024)   /* arena segment size */
#define CMP_SHM_SMALL_MAX (16 * 1024) /* larger: a segment of its own */

typedef struct cmp_shm_seg cmp_shm_seg;

typedef struct {
    void *addr;       /* the block, mapped in this process */
    cmp_shm_seg *seg; /* its segment (process-local bookkeeping) */
    size_t off;       /* offset of the block in its segment */
    size_t size;      /* bytes reserved */
    uint64_t gen;     /* fork generation when allocated or attached */
    int shared;       /* handed to another process */
} cmp_shm_block;

/* Allocate `size` zeroed bytes aligned to `align` (a power of two; up to
 * CMP_SHM_BLOCK for small blocks, page-aligned for large). CMP_OK or
 * CMP_ERRNO. */
int cmp_shm_alloc(size_t size, size_t align, cmp_shm_block *out);
/* align for a page-aligned block in a segment of its own (any size). */
#define CMP_SHM_OWN_SEGMENT ((size_t)-1)

/* Release a block (see "Reuse" above); the struct is cleared. */
void cmp_shm_free(cmp_shm_block *b);

/* The descriptor of the block's segment (owned by the arena) and mark the
 * block as shared with another process, so it is never reused under it. */
int cmp_shm_share(cmp_shm_block *b);

/* Map the block at [off, off+size) of the segment open as `fd` (a memfd from
 * another process). Takes ownership of fd: it is kept open with the mapping,
 * or closed if this process already maps that segment. CMP_OK, or CMP_ERRNO
 * (EINVAL if the range is outside the segment). */
int cmp_shm_attach(int fd, size_t off, size_t size, cmp_shm_block *out);

/* This process's pid, cached (kept right across fork by an atfork handler).
 * Inline: lock paths use it to tell their own process's bookkeeping. */
extern pid_t cmp_shm_pid_;
pid_t cmp_self_pid_init(void);

static inline pid_t
cmp_self_pid(void)
{
    pid_t pid = cmp_shm_pid_;
    return CMP_LIKELY(pid != 0) ? pid : cmp_self_pid_init();
}

/* Accounting, for tests: segments mapped, bytes mapped, blocks in use. */
typedef struct {
    size_t segments;
    size_t bytes;
    size_t blocks_used;
} cmp_shm_stats;

void cmp_shm_get_stats(cmp_shm_stats *st);

#endif /* CMP_SHM_H */
