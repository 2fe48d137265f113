"""Manager benchmarks: the same workloads on multiprocessing and on cmp.

Each workload starts a SyncManager, then times only calls through proxies
(every call is a round trip to the manager's server process).
"""
import time


def _timed(mp, body):
    with mp.Manager() as m:
        return body(m)


def dict_setget(mp, scale=1.0):
    """d[k] = v then d[k]: two round trips each."""
    n = max(1, int(5000 * scale))

    def body(m):
        d = m.dict()
        d['warm'] = 0
        t = time.perf_counter()
        for i in range(n):
            d['k'] = i
            d['k']
        return n, time.perf_counter() - t
    return _timed(mp, body)


def create_proxy(mp, scale=1.0):
    """m.list(): create, incref, decref."""
    n = max(1, int(500 * scale))

    def body(m):
        m.list()
        t = time.perf_counter()
        for _ in range(n):
            m.list()
        return n, time.perf_counter() - t
    return _timed(mp, body)


WORKLOADS = {
    'managers.dict_setget': (dict_setget, 'set+get pairs'),
    'managers.create_proxy': (create_proxy, 'proxies'),
}
