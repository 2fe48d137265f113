/* A minimal unit-test harness for src/core: no Python, no dependencies.
 *
 *   CTEST(name) { CHECK(cond); CHECK_EQ(a, b); }
 *   int main(void) { return ctest_main(); }
 *
 * Each test binary prints one line per failure and ends with the summary
 * line 'N passed, N failed'; its exit status is non-zero on any failure. */
#ifndef CMP_CTEST_H
#define CMP_CTEST_H

#include <stdio.h>
#include <stdlib.h>

typedef void (*ctest_fn)(int *failed);

struct ctest_case {
    const char *name;
    ctest_fn fn;
};

#define CTEST_MAX 256
static struct ctest_case ctest_cases[CTEST_MAX];
static int ctest_ncases;

#define CTEST(name)                                                                 \
    static void ctest_##name(int *ctest_failed);                                    \
    __attribute__((constructor)) static void ctest_register_##name(void)            \
    {                                                                               \
        if (ctest_ncases < CTEST_MAX)                                               \
            ctest_cases[ctest_ncases++] = (struct ctest_case){#name, ctest_##name}; \
    }                                                                               \
    static void ctest_##name(int *ctest_failed)

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            *ctest_failed = 1;                                                       \
            return;                                                                  \
        }                                                                            \
    } while (0)

#define CHECK_EQ(a, b)                                                                            \
    do {                                                                                          \
        long long ctest_a = (long long)(a), ctest_b = (long long)(b);                             \
        if (ctest_a != ctest_b) {                                                                 \
            fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s) failed: %lld != %lld\n", __FILE__, __LINE__, \
                    #a, #b, ctest_a, ctest_b);                                                    \
            *ctest_failed = 1;                                                                    \
            return;                                                                               \
        }                                                                                         \
    } while (0)

static int
ctest_main(void)
{
    int passed = 0, failed = 0;
    for (int i = 0; i < ctest_ncases; i++) {
        int f = 0;
        ctest_cases[i].fn(&f);
        if (f) {
            fprintf(stderr, "FAIL %s\n", ctest_cases[i].name);
            failed++;
        }
        else {
            passed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif /* CMP_CTEST_H */
