"""shared_memory.SharedMemory: create+close+unlink, attach+close."""
import importlib
import time


def _sm(mp):
    return importlib.import_module(mp.__name__ + '.shared_memory')


def create_close_unlink(mp, scale=1.0):
    sm = _sm(mp)
    n = max(1, int(20000 * scale))
    sm.SharedMemory(create=True, size=4096).unlink()     # warm-up: trackers start
    t = time.perf_counter()
    for _ in range(n):
        s = sm.SharedMemory(create=True, size=4096)
        s.close()
        s.unlink()
    return n, time.perf_counter() - t


def attach_close(mp, scale=1.0):
    sm = _sm(mp)
    n = max(1, int(20000 * scale))
    owner = sm.SharedMemory(create=True, size=4096)
    try:
        t = time.perf_counter()
        for _ in range(n):
            sm.SharedMemory(owner.name).close()
        return n, time.perf_counter() - t
    finally:
        owner.close()
        owner.unlink()


WORKLOADS = {
    'shared_memory.create_close_unlink': (create_close_unlink, 'blocks'),
    'shared_memory.attach_close': (attach_close, 'attaches'),
}
