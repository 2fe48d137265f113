"""Pool on a cluster: cmp on Dask and on Ray beside local cmp, each row
against the stdlib's local Pool (the cmp/stdlib column is then "how much of
the local speed the cluster keeps"). The clusters are local ones cmp starts
(`cluster='dask'`, `cluster='ray'`) with one worker per CPU, started and
warmed before the clock starts.

cluster.task.*   1,000 apply_async of a tiny task, then every get(): the
                 cost of one task (a round trip through the engine)
cluster.cpu.*    a CPU-bound map, 8 tasks per CPU, chunksize 1

A row whose engine is not installed (cmp[dask], cmp[ray]) is not listed.
"""
import importlib.util
import os
import time

from bench_pool import _n, _spin, _tiny

CPUS = os.cpu_count() or 1


def _pool(mp, cluster):
    if mp.__name__ == 'cmp':
        return mp.Pool(CPUS, cluster=cluster)
    return mp.Pool(CPUS)


def _task(cluster):
    def task(mp, scale=1.0):
        n = _n(1_000, scale)
        with _pool(mp, cluster) as pool:
            pool.map(_tiny, range(2 * CPUS), chunksize=1)
            t = time.perf_counter()
            total = sum(r.get() for r in [pool.apply_async(_tiny, (i,)) for i in range(n)])
            dt = time.perf_counter() - t
        assert total == n * (n - 1) // 2
        return n, dt
    return task


def _cpu(cluster):
    def cpu(mp, scale=1.0):
        n = _n(8 * CPUS, scale)
        work = 2_000_000
        with _pool(mp, cluster) as pool:
            pool.map(_tiny, range(2 * CPUS), chunksize=1)
            t = time.perf_counter()
            out = pool.map(_spin, [work] * n, chunksize=1)
            dt = time.perf_counter() - t
        assert out == [work * (work - 1) // 2] * n
        return n, dt
    return cpu


_ENGINES = [('local', False, None), ('dask', 'dask', 'distributed'), ('ray', 'ray', 'ray')]

WORKLOADS = {}
for _kind, _make, _unit in (('task', _task, 'tasks'), ('cpu', _cpu, 'tasks')):
    for _name, _cluster, _module in _ENGINES:
        if _module is None or importlib.util.find_spec(_module) is not None:
            WORKLOADS['cluster.%s.%s' % (_kind, _name)] = (_make(_cluster), _unit)
