"""Value and Array workloads: the same code on multiprocessing and on cmp.

Each fn(mp, scale) -> (operations, seconds) times only its measured loop.
"""
import time

from racing import race


def value_locked_increment(mp, scale=1.0):
    """`with v.get_lock(): v.value += 1` in one process."""
    n = max(1, int(1_000_000 * scale))
    v = mp.Value('i', 0)
    t0 = time.perf_counter()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    elapsed = time.perf_counter() - t0
    assert v.value == n
    return n, elapsed


def _increment(v, n, go, done):
    go.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    done.release()


def value_locked_increment_contended(mp, scale=1.0):
    """The same in two processes sharing one Value."""
    n = max(1, int(200_000 * scale))
    v = mp.Value('i', 0)
    elapsed = race(mp, _increment, (v, n))
    assert v.value == 2 * n
    return 2 * n, elapsed


def array_slice(mp, scale=1.0):
    """`Array('d', 1_000_000)[:]`: a synchronized array copied into a list."""
    size = 1_000_000
    rounds = max(1, int(10 * scale))
    a = mp.Array('d', size)
    t0 = time.perf_counter()
    for _ in range(rounds):
        a[:]
    return rounds * size, time.perf_counter() - t0


def array_create_slice(mp, scale=1.0):
    """`Array('d', 1_000_000)[:]` as written: a new array each time, then the list."""
    size = 1_000_000
    rounds = max(1, int(10 * scale))
    t0 = time.perf_counter()
    for _ in range(rounds):
        mp.Array('d', size)[:]
    return rounds * size, time.perf_counter() - t0


def array_elementwise(mp, scale=1.0):
    """`a[i] = a[i] + 1.0` over a synchronized Array('d')."""
    size = max(1, int(500_000 * scale))
    a = mp.Array('d', size)
    t0 = time.perf_counter()
    for i in range(size):
        a[i] = a[i] + 1.0
    return size, time.perf_counter() - t0


def raw_array_elementwise(mp, scale=1.0):
    """`a[i] = a[i] + 1` over a RawArray('i')."""
    size = max(1, int(1_000_000 * scale))
    a = mp.RawArray('i', size)
    t0 = time.perf_counter()
    for i in range(size):
        a[i] = a[i] + 1
    return size, time.perf_counter() - t0


WORKLOADS = {
    'sharedctypes.value_locked_increment': (value_locked_increment, 'increments'),
    'sharedctypes.value_locked_increment_2procs': (value_locked_increment_contended,
                                                   'increments'),
    'sharedctypes.array_slice': (array_slice, 'elements'),
    'sharedctypes.array_create_slice': (array_create_slice, 'elements'),
    'sharedctypes.array_elementwise': (array_elementwise, 'read+write'),
    'sharedctypes.raw_array_elementwise': (raw_array_elementwise, 'read+write'),
}
