/* memfd-backed shared segments and the small-object arena (see shm.h). */
#include "shm.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NBLOCKS (CMP_SHM_SEGMENT / CMP_SHM_BLOCK)
#define NWORDS (NBLOCKS / 64)

struct cmp_shm_seg {
    cmp_shm_seg *next;
    int fd;
    char *base;
    size_t size;
    dev_t dev;
    ino_t ino;
    pid_t owner; /* allocates from it and unmaps it; 0: attached */
    int small;   /* an arena segment (else one large block) */
    size_t used; /* arena blocks in use */
    uint64_t bitmap[NWORDS];
};

/* Every segment this process maps (its own, inherited ones, attached ones). */
static cmp_shm_seg *segments;
/* Bumped in parent and child at every fork: a block allocated in an earlier
 * generation may be in use by a child. */
static uint64_t fork_gen;
pid_t cmp_shm_pid_; /* 0 until init() */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------------------ */
/* Process identity across fork                                             */

static void
after_fork_parent(void)
{
    fork_gen++;
}

static void
after_fork_child(void)
{
    cmp_shm_pid_ = getpid();
    fork_gen++;
}

static void
init(void)
{
    cmp_shm_pid_ = getpid();
    /* Cannot fail but for ENOMEM; without the handlers a forked child would
     * not know it is a child, so fall back to never reusing blocks. */
    if (pthread_atfork(NULL, after_fork_parent, after_fork_child) != 0)
        fork_gen = UINT64_MAX;
}

pid_t
cmp_self_pid_init(void)
{
    pthread_once(&init_once, init);
    return cmp_shm_pid_;
}

/* ------------------------------------------------------------------------ */
/* Segments                                                                 */

static cmp_shm_seg *
seg_new(int fd, size_t size, pid_t owner)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0)
        return NULL;
    cmp_shm_seg *seg = calloc(1, sizeof(*seg));
    if (seg == NULL)
        return NULL;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int saved = errno;
        free(seg);
        errno = saved;
        return NULL;
    }
    seg->fd = fd;
    seg->base = base;
    seg->size = size;
    seg->dev = sb.st_dev;
    seg->ino = sb.st_ino;
    seg->owner = owner;
    seg->next = segments;
    segments = seg;
    return seg;
}

/* A new memfd segment of `size` bytes owned by this process. */
static cmp_shm_seg *
seg_create(size_t size, int small)
{
    int fd = memfd_create(small ? "cmp-arena" : "cmp-shm", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    cmp_shm_seg *seg = NULL;
    if (ftruncate(fd, (off_t)size) == 0)
        seg = seg_new(fd, size, cmp_shm_pid_);
    if (seg == NULL) {
        int saved = errno;
        close(fd);
        errno = saved;
        return NULL;
    }
    seg->small = small;
    return seg;
}

static void
seg_destroy(cmp_shm_seg *seg)
{
    for (cmp_shm_seg **p = &segments; *p != NULL; p = &(*p)->next) {
        if (*p == seg) {
            *p = seg->next;
            break;
        }
    }
    munmap(seg->base, seg->size);
    close(seg->fd);
    free(seg);
}

/* ------------------------------------------------------------------------ */
/* Arena bitmap                                                             */

static int
bit_get(const uint64_t *bm, size_t i)
{
    return (bm[i / 64] >> (i % 64)) & 1;
}

static void
bits_set(uint64_t *bm, size_t start, size_t n, int on)
{
    for (size_t i = start; i < start + n; i++) {
        if (on)
            bm[i / 64] |= (uint64_t)1 << (i % 64);
        else
            bm[i / 64] &= ~((uint64_t)1 << (i % 64));
    }
}

/* First run of n free blocks, or -1. */
static long
find_run(const uint64_t *bm, size_t n)
{
    if (n == 1) {
        for (size_t w = 0; w < NWORDS; w++) {
            if (bm[w] != UINT64_MAX)
                return (long)(w * 64 + (size_t)__builtin_ctzll(~bm[w]));
        }
        return -1;
    }
    size_t run = 0;
    for (size_t i = 0; i < NBLOCKS; i++) {
        if (bit_get(bm, i)) {
            run = 0;
        }
        else if (++run == n) {
            return (long)(i + 1 - n);
        }
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Blocks                                                                   */

int
cmp_shm_alloc(size_t size, size_t align, cmp_shm_block *out)
{
    pthread_once(&init_once, init);
    memset(out, 0, sizeof(*out));
    if (size == 0)
        size = 1;
    if (size > CMP_SHM_SMALL_MAX || align > CMP_SHM_BLOCK) {
        long page = sysconf(_SC_PAGESIZE);
        if (align > (size_t)page && align != CMP_SHM_OWN_SEGMENT) {
            errno = EINVAL;
            return CMP_ERRNO;
        }
        size_t rounded = (size + (size_t)page - 1) / (size_t)page * (size_t)page;
        cmp_shm_seg *seg = seg_create(rounded, 0);
        if (seg == NULL)
            return CMP_ERRNO;
        seg->used = 1;
        *out = (cmp_shm_block){seg->base, seg, 0, rounded, fork_gen, 0};
        return CMP_OK;
    }
    size_t n = (size + CMP_SHM_BLOCK - 1) / CMP_SHM_BLOCK;
    cmp_shm_seg *seg;
    long at = -1;
    for (seg = segments; seg != NULL; seg = seg->next) {
        if (seg->small && seg->owner == cmp_shm_pid_ && NBLOCKS - seg->used >= n
            && (at = find_run(seg->bitmap, n)) >= 0)
            break;
    }
    if (seg == NULL) {
        seg = seg_create(CMP_SHM_SEGMENT, 1);
        if (seg == NULL)
            return CMP_ERRNO;
        at = 0;
    }
    bits_set(seg->bitmap, (size_t)at, n, 1);
    seg->used += n;
    size_t off = (size_t)at * CMP_SHM_BLOCK;
    memset(seg->base + off, 0, n * CMP_SHM_BLOCK);
    *out = (cmp_shm_block){seg->base + off, seg, off, n * CMP_SHM_BLOCK, fork_gen, 0};
    return CMP_OK;
}

/* Keep one empty arena segment for the next allocations, unmap the others. */
static void
maybe_release_segment(cmp_shm_seg *seg)
{
    for (cmp_shm_seg *s = segments; s != NULL; s = s->next) {
        if (s != seg && s->small && s->owner == cmp_shm_pid_ && s->used == 0) {
            seg_destroy(seg);
            return;
        }
    }
}

void
cmp_shm_free(cmp_shm_block *b)
{
    cmp_shm_seg *seg = b->seg;
    if (seg != NULL && seg->owner == cmp_shm_pid_ && !seg->small) {
        /* A segment of its own is never reused: other processes (children
         * that inherited it, or were sent its descriptor) keep their own
         * mapping, so ours goes now, shared or not. */
        seg_destroy(seg);
    }
    else if (seg != NULL && seg->owner == cmp_shm_pid_ && !b->shared && b->gen == fork_gen) {
        {
            size_t n = b->size / CMP_SHM_BLOCK;
            bits_set(seg->bitmap, b->off / CMP_SHM_BLOCK, n, 0);
            seg->used -= n;
            if (seg->used == 0)
                maybe_release_segment(seg);
        }
    }
    memset(b, 0, sizeof(*b));
}

int
cmp_shm_share(cmp_shm_block *b)
{
    b->shared = 1;
    return b->seg->fd;
}

int
cmp_shm_attach(int fd, size_t off, size_t size, cmp_shm_block *out)
{
    pthread_once(&init_once, init);
    memset(out, 0, sizeof(*out));
    struct stat sb;
    if (fstat(fd, &sb) < 0)
        return CMP_ERRNO;
    cmp_shm_seg *seg;
    for (seg = segments; seg != NULL; seg = seg->next) {
        if (seg->dev == sb.st_dev && seg->ino == sb.st_ino)
            break;
    }
    if (seg != NULL) {
        if (seg->fd != fd)
            close(fd);
    }
    else {
        if (sb.st_size <= 0) {
            errno = EINVAL;
            return CMP_ERRNO;
        }
        seg = seg_new(fd, (size_t)sb.st_size, 0);
        if (seg == NULL)
            return CMP_ERRNO;
    }
    if (off > seg->size || size > seg->size - off) {
        errno = EINVAL;
        return CMP_ERRNO;
    }
    *out = (cmp_shm_block){seg->base + off, seg, off, size, fork_gen, 1};
    return CMP_OK;
}

void
cmp_shm_get_stats(cmp_shm_stats *st)
{
    memset(st, 0, sizeof(*st));
    for (cmp_shm_seg *s = segments; s != NULL; s = s->next) {
        st->segments++;
        st->bytes += s->size;
        if (s->small && s->owner == cmp_shm_pid_)
            st->blocks_used += s->used;
    }
}
