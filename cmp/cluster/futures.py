"""concurrent.futures.ProcessPoolExecutor on a cluster: a cluster Pool
behind the Executor API (under `python -m cmp --cluster`, the runner puts
this class in concurrent.futures' place)."""
import concurrent.futures
import itertools
import threading

from .pool import ClusterPool


def _process_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


class ProcessPoolExecutor(concurrent.futures.Executor):
    """ProcessPoolExecutor(max_workers=None, mp_context=None, initializer=None,
    initargs=(), *, max_tasks_per_child=None, cluster=None), its tasks on the
    cluster at `cluster` (default: CMP_CLUSTER). A task whose worker dies
    fails alone with cmp.pool.WorkerLostError: the executor stays usable."""

    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(),
                 *, max_tasks_per_child=None, cluster=None):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._pool = ClusterPool(max_workers, initializer, initargs, max_tasks_per_child,
                                 cluster=cluster)
        self._max_workers = self._pool._processes
        self._lock = threading.Lock()
        self._futures = set()
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        with self._lock:
            if self._shutdown:
                raise RuntimeError('cannot schedule new futures after shutdown')
            f = concurrent.futures.Future()
            self._futures.add(f)
        self._pool.apply_async(fn, args, kwargs, lambda v: self._settle(f, v, True),
                               lambda e: self._settle(f, e, False))
        return f

    submit.__doc__ = concurrent.futures.Executor.submit.__doc__

    def _settle(self, f, value, ok):
        with self._lock:
            self._futures.discard(f)
        if f.set_running_or_notify_cancel():
            if ok:
                f.set_result(value)
            else:
                f.set_exception(value)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        it = zip(*iterables)
        chunks = iter(lambda: tuple(itertools.islice(it, chunksize)), ())
        results = super().map(_process_chunk, itertools.repeat(fn), chunks, timeout=timeout)
        return (item for chunk in results for item in chunk)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for f in self._futures:
                    f.cancel()
        if cancel_futures:
            self._pool.terminate()
        else:
            self._pool.close()
        if wait:
            self._pool.join()

    shutdown.__doc__ = concurrent.futures.Executor.shutdown.__doc__
