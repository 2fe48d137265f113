"""Pool and ProcessPoolExecutor on a Dask or Ray cluster.

    python -m cmp --cluster ADDRESS script.py      (or CMP_CLUSTER=ADDRESS)
    cmp.Pool(8, cluster=ADDRESS)
    cmp.cluster.ProcessPoolExecutor(8, cluster=ADDRESS)

ADDRESS: 'dask' (a local Dask cluster, started), 'dask://HOST:PORT' or
'tcp://HOST:PORT' (a running Dask scheduler), 'ray' (the Ray at RAY_ADDRESS,
else a local Ray, started) or 'ray://HOST:PORT' (Ray Client). The engines (the extras
cmp[dask], cmp[ray]) are imported only when a pool is made.
"""
import importlib.util
import os

__all__ = ['Pool', 'ProcessPoolExecutor', 'parse', 'install']

_EXTRAS = {'dask': ('distributed', 'cmp[dask]'), 'ray': ('ray', 'cmp[ray]')}


def parse(address):
    """('dask' | 'ray', target or None) for a cluster address; ValueError
    for one that is not."""
    if not isinstance(address, str):
        raise TypeError('cluster address must be a str, not %s' % type(address).__name__)
    a = address.strip()
    if a in ('dask', 'ray'):
        return a, None
    for prefix, engine in (('dask://', 'dask'), ('tcp://', 'dask'), ('ray://', 'ray')):
        if a.startswith(prefix) and len(a) > len(prefix):
            return engine, ('tcp://' + a[len(prefix):] if engine == 'dask' else a)
    raise ValueError("cluster address %r is not 'dask', 'dask://HOST:PORT', "
                     "'tcp://HOST:PORT', 'ray' or 'ray://HOST:PORT'" % (address,))


def check(address):
    """parse(address), and an ImportError naming the extra if the engine is absent."""
    engine, target = parse(address)
    module, extra = _EXTRAS[engine]
    if importlib.util.find_spec(module) is None:
        raise ImportError("cluster %r needs %s: pip install '%s'" % (address, module, extra),
                          name=module)
    return engine, target


def connect(address):
    from . import engines
    return engines.connect(*check(address))


def pool_type(address):
    """The Pool class for a cluster address (its engine is checked first)."""
    check(address)
    from .pool import ClusterPool
    return ClusterPool


def install(address):
    """The runner's hook (python -m cmp --cluster ADDRESS): check the address
    now, let children inherit it, and make concurrent.futures'
    ProcessPoolExecutor the cluster one."""
    check(address)
    os.environ['CMP_CLUSTER'] = address
    import concurrent.futures
    import concurrent.futures.process
    from .futures import ProcessPoolExecutor
    concurrent.futures.ProcessPoolExecutor = ProcessPoolExecutor
    concurrent.futures.process.ProcessPoolExecutor = ProcessPoolExecutor


def __getattr__(name):
    if name == 'Pool':
        from .pool import ClusterPool
        return ClusterPool
    if name == 'ProcessPoolExecutor':
        from .futures import ProcessPoolExecutor
        return ProcessPoolExecutor
    raise AttributeError('module %r has no attribute %r' % (__name__, name))
