/* Named POSIX shared memory and its resource tracker. */
#include "pshm.h"
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Blocks                                                                   */

int
cmp_pshm_open(const char *name, int create, size_t *size)
{
    int flags = O_RDWR | (create ? O_CREAT | O_EXCL : 0);
    int fd = shm_open(name, flags, 0600); /* glibc sets O_CLOEXEC */
    if (fd < 0)
        return CMP_ERRNO;
    if (create) {
        int r;
        do {
            r = ftruncate(fd, (off_t)*size);
        } while (r < 0 && errno == EINTR);
        if (r < 0) {
            int saved = errno;
            shm_unlink(name);
            close(fd);
            errno = saved;
            return CMP_ERRNO;
        }
    }
    else {
        struct stat st;
        if (fstat(fd, &st) < 0) {
            int saved = errno;
            close(fd);
            errno = saved;
            return CMP_ERRNO;
        }
        *size = (size_t)st.st_size;
    }
    return fd;
}

int
cmp_pshm_create_random(size_t size, char name[CMP_PSHM_RANDOM_NAME_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (;;) {
        unsigned char rnd[4];
        if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
            return CMP_ERRNO;
        memcpy(name, "/psm_", 5);
        for (int i = 0; i < 4; i++) {
            name[5 + 2 * i] = hex[rnd[i] >> 4];
            name[6 + 2 * i] = hex[rnd[i] & 15];
        }
        name[CMP_PSHM_RANDOM_NAME_LEN] = '\0';
        size_t sz = size;
        int fd = cmp_pshm_open(name, 1, &sz);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
}

int
cmp_pshm_unlink(const char *name)
{
    return shm_unlink(name) == 0 ? CMP_OK : CMP_ERRNO;
}

/* ------------------------------------------------------------------------ */
/* The tracker's table                                                      */

#define SLOT_FREE 0u
#define SLOT_WRITING 1u
#define SLOT_USED 2u
#define SLOT_NAME_MAX 488
#define TRACKER_SLOTS 65536u /* 32 MiB of address space, touched as used */

typedef struct {
    _Atomic uint32_t state;
    uint32_t kind; /* CMP_TRACK_SHM or CMP_TRACK_SEM */
    uint64_t dev;
    uint64_t ino;
    char name[SLOT_NAME_MAX];
} track_slot;

typedef struct {
    _Atomic uint32_t high; /* one past the highest slot ever used */
    _Atomic uint32_t hint; /* where to start looking for a free slot */
    char pad[sizeof(track_slot) - 8];
} track_header;

_Static_assert(sizeof(track_slot) == 512, "slot layout");
_Static_assert(sizeof(track_header) == sizeof(track_slot), "header layout");

typedef struct {
    track_header head;
    track_slot slots[];
} track_table;

#define TRACKER_BYTES (sizeof(track_header) + TRACKER_SLOTS * sizeof(track_slot))

/* Process-wide: the tracker is a property of the process (and of the
 * children it forks afterwards, which inherit the mapping and the pipe, and
 * of those started afresh, which are handed both: cmp_tracker_attach). */
static track_table *tracker_table;
static int tracker_memfd = -1; /* the table's, kept (close-on-exec) to hand on */
static int tracker_pipe_w = -1;
static pid_t tracker_pid = -1;
static pid_t tracker_owner = -1; /* the process that forked it */

/* ------------------------------------------------------------------------ */
/* The tracker process: async-signal-safe calls only (it is forked from a
 * process that may have other threads).                                    */

static size_t
fmt_uint(char *out, unsigned long v)
{
    char tmp[24];
    size_t n = 0, i = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        out[i++] = tmp[--n];
    return i;
}

static void
write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* Unlink slot's block if it is still the one that was registered. */
static int
cleanup_slot(track_slot *s)
{
    char path[16 + SLOT_NAME_MAX] = "/dev/shm";
    size_t n = strlen(s->name);
    memcpy(path + 8, s->name, n + 1);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return 0; /* already unlinked by someone */
    struct stat st;
    int same =
            fstat(fd, &st) == 0 && (uint64_t)st.st_dev == s->dev && (uint64_t)st.st_ino == s->ino;
    close(fd);
    return same && unlink(path) == 0;
}

static _Noreturn void
tracker_main(int rfd, track_table *t)
{
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ign, NULL); /* Ctrl-C in the terminal, like the stdlib's */
    sigaction(SIGTERM, &ign, NULL);
    sigset_t both; /* blocked by launch_tracker until now */
    sigemptyset(&both);
    sigaddset(&both, SIGINT);
    sigaddset(&both, SIGTERM);
    sigprocmask(SIG_UNBLOCK, &both, NULL);
    prctl(PR_SET_NAME, "cmp-tracker"); /* what ps shows */

    /* Hold nothing of the parent's but stderr and our pipe, or we would keep
     * its pipes and sockets open (no EOF for their readers). */
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
    }
    cmp_close_all_but(rfd);

    char buf[64];
    for (;;) {
        ssize_t r = read(rfd, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }

    unsigned long leaked[CMP_TRACK_KINDS] = {0};
    uint32_t high = atomic_load(&t->head.high);
    for (uint32_t i = 0; i < high && i < TRACKER_SLOTS; i++) {
        track_slot *s = &t->slots[i];
        if (atomic_load(&s->state) == SLOT_USED && s->kind < CMP_TRACK_KINDS)
            leaked[s->kind] += (unsigned long)cleanup_slot(s);
    }
    static const char *const kinds[CMP_TRACK_KINDS] = {"shared_memory", "semaphore"};
    for (int k = 0; k < CMP_TRACK_KINDS; k++) {
        if (!leaked[k])
            continue;
        static const char a[] = "cmp/resource_tracker: UserWarning: resource_tracker: "
                                "There appear to be ";
        static const char b[] = " objects to clean up at shutdown\n";
        char line[sizeof a + sizeof b + 64];
        size_t n = 0, kn = strlen(kinds[k]);
        memcpy(line, a, sizeof a - 1);
        n += sizeof a - 1;
        n += fmt_uint(line + n, leaked[k]);
        memcpy(line + n, " leaked ", 8);
        n += 8;
        memcpy(line + n, kinds[k], kn);
        n += kn;
        memcpy(line + n, b, sizeof b - 1);
        n += sizeof b - 1;
        write_all(2, line, n);
    }
    _exit(0);
}

/* Fork a tracker watching a new pipe over the table mem. */
static int
launch_tracker(track_table *mem)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return CMP_ERRNO;
    /* SIGINT and SIGTERM stay blocked until the tracker ignores them, so
     * one sent at once cannot kill it before it does. */
    sigset_t both, old;
    sigemptyset(&both);
    sigaddset(&both, SIGINT);
    sigaddset(&both, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &both, &old);
    pid_t pid = fork();
    int saved = errno;
    if (pid != 0)
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        errno = saved;
        return CMP_ERRNO;
    }
    if (pid == 0) {
        close(p[1]);
        tracker_main(p[0], mem);
    }
    close(p[0]);
    tracker_pid = pid;
    tracker_owner = getpid();
    tracker_pipe_w = p[1];
    return CMP_OK;
}

int
cmp_tracker_ensure(void)
{
    if (tracker_table != NULL)
        return CMP_OK;
    int saved;
    int mfd = memfd_create("cmp-tracker", MFD_CLOEXEC);
    if (mfd < 0)
        return CMP_ERRNO;
    void *mem = MAP_FAILED;
    if (ftruncate(mfd, (off_t)TRACKER_BYTES) < 0)
        goto fail;
    mem = mmap(NULL, TRACKER_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (mem == MAP_FAILED)
        goto fail;
    if (launch_tracker(mem) != CMP_OK)
        goto fail;
    tracker_table = mem;
    tracker_memfd = mfd;
    return CMP_OK;
fail:
    saved = errno;
    if (mfd >= 0)
        close(mfd);
    if (mem != MAP_FAILED)
        munmap(mem, TRACKER_BYTES);
    errno = saved;
    return CMP_ERRNO;
}

static int
set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);
    return flags >= 0 && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == 0;
}

int
cmp_tracker_attach(int table_fd, int pipe_fd, int pid)
{
    if (tracker_table != NULL) {
        if (tracker_owner == getpid() || tracker_pid == pid) {
            /* Keep ours (its registrations are there), or the same one. */
            close(table_fd);
            close(pipe_fd);
            return CMP_OK;
        }
        /* One inherited (a child of the fork server gets the server's) that
         * is not the tracker handed over: use the one handed over. */
        munmap(tracker_table, TRACKER_BYTES);
        close(tracker_memfd);
        close(tracker_pipe_w);
        tracker_table = NULL;
        tracker_memfd = tracker_pipe_w = -1;
    }
    struct stat tst, pst;
    void *mem;
    int saved;
    if (fstat(table_fd, &tst) < 0 || fstat(pipe_fd, &pst) < 0)
        goto fail;
    if (!S_ISREG(tst.st_mode) || (size_t)tst.st_size != TRACKER_BYTES || !S_ISFIFO(pst.st_mode)
        || pid <= 0) {
        errno = EINVAL;
        goto fail;
    }
    if (!set_cloexec(table_fd) || !set_cloexec(pipe_fd))
        goto fail;
    mem = mmap(NULL, TRACKER_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, table_fd, 0);
    if (mem == MAP_FAILED)
        goto fail;
    tracker_table = mem;
    tracker_memfd = table_fd;
    tracker_pipe_w = pipe_fd;
    tracker_pid = pid;
    tracker_owner = -1; /* not ours to relaunch (see cmp_tracker_revive) */
    return CMP_OK;
fail:
    saved = errno;
    close(table_fd);
    close(pipe_fd);
    errno = saved;
    return CMP_ERRNO;
}

/* Whether the tracker its starter forked still runs (waitpid also reaps a
 * dead one; ECHILD: someone reaped it already). */
static int
tracker_alive(void)
{
    int st;
    return waitpid(tracker_pid, &st, WNOHANG) == 0;
}

int
cmp_tracker_revive(void)
{
    if (tracker_table == NULL) {
        int st = cmp_tracker_ensure();
        return st == CMP_OK ? 0 : st;
    }
    /* Only the starter relaunches: a tracker started by a forked child would
     * unlink its parent's blocks when the child exits. */
    if (tracker_owner != getpid() || tracker_alive())
        return 0;
    close(tracker_pipe_w);
    tracker_pipe_w = -1;
    int st = launch_tracker(tracker_table);
    return st == CMP_OK ? 1 : st;
}

int
cmp_tracker_add(const char *name, int fd, int kind)
{
    size_t n = strlen(name);
    struct stat st;
    if (n >= SLOT_NAME_MAX) {
        errno = ENAMETOOLONG;
        return CMP_ERRNO;
    }
    if (fstat(fd, &st) < 0)
        return CMP_ERRNO;
    int st_ = cmp_tracker_ensure();
    if (st_ != CMP_OK)
        return st_;
    track_table *t = tracker_table;
    uint32_t start = atomic_load_explicit(&t->head.hint, memory_order_relaxed) % TRACKER_SLOTS;
    for (uint32_t k = 0; k < TRACKER_SLOTS; k++) {
        uint32_t i = (start + k) % TRACKER_SLOTS;
        track_slot *s = &t->slots[i];
        uint32_t expected = SLOT_FREE;
        if (atomic_load_explicit(&s->state, memory_order_relaxed) != SLOT_FREE
            || !atomic_compare_exchange_strong(&s->state, &expected, SLOT_WRITING))
            continue;
        s->kind = (uint32_t)kind;
        s->dev = (uint64_t)st.st_dev;
        s->ino = (uint64_t)st.st_ino;
        memcpy(s->name, name, n + 1);
        uint32_t high = atomic_load(&t->head.high);
        while (high < i + 1 && !atomic_compare_exchange_weak(&t->head.high, &high, i + 1))
            ;
        atomic_store_explicit(&t->head.hint, i + 1, memory_order_relaxed);
        atomic_store_explicit(&s->state, SLOT_USED, memory_order_release);
        return (int)i;
    }
    return CMP_EFULL;
}

void
cmp_tracker_remove(int slot)
{
    if (tracker_table == NULL || slot < 0 || (uint32_t)slot >= TRACKER_SLOTS)
        return;
    track_slot *s = &tracker_table->slots[slot];
    atomic_store_explicit(&s->state, SLOT_FREE, memory_order_release);
    uint32_t hint = atomic_load_explicit(&tracker_table->head.hint, memory_order_relaxed);
    if ((uint32_t)slot < hint)
        atomic_store_explicit(&tracker_table->head.hint, (uint32_t)slot, memory_order_relaxed);
}

int
cmp_tracker_forget(const char *name, int kind)
{
    if (tracker_table == NULL)
        return 0;
    int n = 0;
    uint32_t high = atomic_load(&tracker_table->head.high);
    for (uint32_t i = 0; i < high && i < TRACKER_SLOTS; i++) {
        track_slot *s = &tracker_table->slots[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) == SLOT_USED
            && s->kind == (uint32_t)kind && strcmp(s->name, name) == 0) {
            cmp_tracker_remove((int)i);
            n++;
        }
    }
    return n;
}

int
cmp_tracker_fd(int *pid)
{
    *pid = tracker_pid;
    return tracker_pipe_w;
}

int
cmp_tracker_table_fd(void)
{
    return tracker_memfd;
}

void *
cmp_pshm_map_and_close(int fd, size_t size)
{
    void *addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int saved = errno;
    close(fd);
    errno = saved;
    return addr == MAP_FAILED ? NULL : addr;
}

void
cmp_pshm_unmap(void *addr, size_t size)
{
    munmap(addr, size);
}
