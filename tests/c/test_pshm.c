/* Unit tests of src/core/pshm.c. */
#include "ctest.h"
#include "pshm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void
unique_name(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, "/cmp_ctest_%s_%d", tag, (int)getpid());
}

/* In a child that starts a tracker, which inherits stderr: keep its expected
 * warning out of the log. */
static void
quiet_stderr(void)
{
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0)
        dup2(null, 2);
}

/* Whether the file at path is gone within five seconds (the tracker unlinks
 * once the child that started it has exited). */
static int
gone_soon(const char *path)
{
    for (int i = 0; i < 500 && access(path, F_OK) == 0; i++)
        usleep(10000);
    return access(path, F_OK) != 0;
}

CTEST(create_attach_unlink)
{
    char name[64];
    unique_name(name, sizeof name, "cau");
    size_t size = 12345;
    int fd = cmp_pshm_open(name, 1, &size);
    CHECK(fd >= 0);
    size_t again = 1;
    CHECK_EQ(cmp_pshm_open(name, 1, &again), CMP_ERRNO);
    CHECK_EQ(errno, EEXIST);
    size_t seen = 0;
    int fd2 = cmp_pshm_open(name, 0, &seen);
    CHECK(fd2 >= 0);
    CHECK_EQ(seen, 12345);
    CHECK_EQ(cmp_pshm_unlink(name), CMP_OK);
    CHECK_EQ(cmp_pshm_unlink(name), CMP_ERRNO);
    CHECK_EQ(errno, ENOENT);
    close(fd);
    close(fd2);
    CHECK_EQ(cmp_pshm_open(name, 0, &seen), CMP_ERRNO);
    CHECK_EQ(errno, ENOENT);
}

CTEST(tracker_unlinks_what_is_left)
{
    char kept[64], freed[64];
    unique_name(kept, sizeof kept, "kept");
    unique_name(freed, sizeof freed, "freed");
    /* A child starts a tracker, registers two blocks, unlinks one itself and
     * exits: the tracker must unlink the other. */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        quiet_stderr();
        size_t sz = 64;
        int a = cmp_pshm_open(kept, 1, &sz), b = cmp_pshm_open(freed, 1, &sz);
        if (a < 0 || b < 0)
            _exit(2);
        int sa = cmp_tracker_add(kept, a, CMP_TRACK_SHM),
            sb = cmp_tracker_add(freed, b, CMP_TRACK_SHM);
        if (sa < 0 || sb < 0)
            _exit(3);
        cmp_pshm_unlink(freed);
        cmp_tracker_remove(sb);
        _exit(0);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char kept_path[96];
    snprintf(kept_path, sizeof kept_path, "/dev/shm%s", kept);
    CHECK(gone_soon(kept_path));
    size_t seen;
    CHECK_EQ(cmp_pshm_open(kept, 0, &seen), CMP_ERRNO);
    CHECK_EQ(errno, ENOENT);
}

CTEST(tracker_kinds_and_forget_by_name)
{
    /* A semaphore's file (/dev/shm/sem.NAME) is unlinked like a block; a
     * registration forgotten by name is left alone. */
    char sem[64], forgotten[64], sem_path[96];
    unique_name(sem, sizeof sem, "sem");
    unique_name(forgotten, sizeof forgotten, "forgotten");
    snprintf(sem_path, sizeof sem_path, "/dev/shm/sem.%s", sem + 1);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        quiet_stderr();
        size_t sz = 64;
        int s = open(sem_path, O_RDWR | O_CREAT | O_EXCL, 0600);
        int f = cmp_pshm_open(forgotten, 1, &sz);
        if (s < 0 || f < 0)
            _exit(2);
        char sem_name[96];
        snprintf(sem_name, sizeof sem_name, "/sem.%s", sem + 1);
        if (cmp_tracker_add(sem_name, s, CMP_TRACK_SEM) < 0
            || cmp_tracker_add(forgotten, f, CMP_TRACK_SHM) < 0
            || cmp_tracker_add(forgotten, f, CMP_TRACK_SHM) < 0)
            _exit(3);
        if (cmp_tracker_forget(forgotten, CMP_TRACK_SEM) != 0 || /* wrong kind */
            cmp_tracker_forget(forgotten, CMP_TRACK_SHM) != 2)
            _exit(4);
        int pid_;
        if (cmp_tracker_fd(&pid_) < 0 || pid_ <= 0)
            _exit(5);
        _exit(0);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(gone_soon(sem_path));
    size_t seen;
    int fd = cmp_pshm_open(forgotten, 0, &seen);
    CHECK(fd >= 0);
    close(fd);
    CHECK_EQ(cmp_pshm_unlink(forgotten), CMP_OK);
}

int
main(void)
{
    return ctest_main();
}
