"""Pool workloads (the issue's targets against the stdlib in brackets).

pool.apply_async   20,000 apply_async of a tiny task, then every get() [>= 5x]
pool.map           map of 200,000 tiny items, default chunksize [>= 2x]
pool.imap          imap of 20,000 tiny items, chunksize=1 [>= 5x]
pool.start_stop    `with Pool(4): pass` (start-up and shut-down) [>= 1.5x]
pool.cpu           CPU-bound tasks on every core (map, chunksize=1) [>= 1x]

The pool (os.cpu_count() workers, fork) is started, and used once, before
the clock starts, except in start_stop.
"""
import os
import time


def _tiny(x):
    return x


def _spin(n):
    s = 0
    for i in range(n):
        s += i
    return s


def _n(base, scale):
    return max(1, int(base * scale))


def apply_async(mp, scale=1.0):
    n = _n(20_000, scale)
    with mp.Pool() as pool:
        pool.map(_tiny, range(100))
        t = time.perf_counter()
        results = [pool.apply_async(_tiny, (i,)) for i in range(n)]
        total = sum(r.get() for r in results)
        dt = time.perf_counter() - t
    assert total == n * (n - 1) // 2
    return n, dt


def map_(mp, scale=1.0):
    n = _n(200_000, scale)
    with mp.Pool() as pool:
        pool.map(_tiny, range(100))
        t = time.perf_counter()
        out = pool.map(_tiny, range(n))
        dt = time.perf_counter() - t
    assert len(out) == n and out[-1] == n - 1
    return n, dt


def imap(mp, scale=1.0):
    n = _n(20_000, scale)
    with mp.Pool() as pool:
        pool.map(_tiny, range(100))
        t = time.perf_counter()
        total = sum(pool.imap(_tiny, range(n)))
        dt = time.perf_counter() - t
    assert total == n * (n - 1) // 2
    return n, dt


def start_stop(mp, scale=1.0):
    n = _n(20, scale)
    with mp.Pool(4):
        pass
    t = time.perf_counter()
    for _ in range(n):
        with mp.Pool(4):
            pass
    return n, time.perf_counter() - t


def cpu(mp, scale=1.0):
    cores = os.cpu_count() or 1
    n = _n(16 * cores, scale)
    with mp.Pool() as pool:
        pool.map(_tiny, range(100))
        t = time.perf_counter()
        pool.map(_spin, [200_000] * n, chunksize=1)
        dt = time.perf_counter() - t
    return n, dt


WORKLOADS = {
    'pool.apply_async': (apply_async, 'tasks'),
    'pool.map': (map_, 'items'),
    'pool.imap': (imap, 'items'),
    'pool.start_stop': (start_stop, 'pools'),
    'pool.cpu': (cpu, 'tasks'),
}
