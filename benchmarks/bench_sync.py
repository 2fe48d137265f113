"""Synchronization workloads: the same code on multiprocessing and on cmp.

Each fn(mp, scale) -> (operations, seconds) times only its measured loop.
"""
import time

from racing import race


def lock_uncontended(mp, scale=1.0):
    """acquire(); release() on a Lock nobody else uses."""
    n = max(1, int(2_000_000 * scale))
    lock = mp.Lock()
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    return n, time.perf_counter() - t0


def _contend(lock, n, go, done):
    go.wait()
    acquire, release = lock.acquire, lock.release
    for _ in range(n):
        acquire()
        release()
    done.release()


def lock_contended(mp, scale=1.0):
    """Two processes taking one Lock around an empty critical section."""
    n = max(1, int(1_000_000 * scale))       # long enough to hide start skew
    return 2 * n, race(mp, _contend, (mp.Lock(), n))


def _pong(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def event_pingpong(mp, scale=1.0):
    """Event set/wait round trips between two processes."""
    n = max(1, int(20_000 * scale))
    ping, pong = mp.Event(), mp.Event()
    p = mp.Process(target=_pong, args=(ping, pong, n))
    p.start()
    t0 = time.perf_counter()
    for _ in range(n):
        ping.set()
        pong.wait()
        pong.clear()
    elapsed = time.perf_counter() - t0
    p.join()
    return n, elapsed


def _cond_side(cond, turn, want, n):
    # turn.get_value() is whose turn it is (0 or 1): a cheap shared flag
    # that both libraries implement the same way.
    for _ in range(n):
        with cond:
            cond.wait_for(lambda: turn.get_value() == want)
            if want:
                turn.acquire()
            else:
                turn.release()
            cond.notify()


def condition_pingpong(mp, scale=1.0):
    """Condition notify/wait_for round trips between two processes."""
    n = max(1, int(20_000 * scale))
    cond, turn = mp.Condition(), mp.Semaphore(0)
    p = mp.Process(target=_cond_side, args=(cond, turn, 1, n))
    p.start()
    t0 = time.perf_counter()
    _cond_side(cond, turn, 0, n)
    elapsed = time.perf_counter() - t0
    p.join()
    return n, elapsed


WORKLOADS = {
    'sync.lock_uncontended': (lock_uncontended, 'acquire+release'),
    'sync.lock_contended': (lock_contended, 'acquire+release'),
    'sync.event_pingpong': (event_pingpong, 'round trips'),
    'sync.condition_pingpong': (condition_pingpong, 'round trips'),
}

