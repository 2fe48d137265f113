"""The engines a cluster Pool submits to, behind one small interface.

    engine.cpus()                       the cluster's worker CPUs
    engine.submit(args, maxtasks, done) run worker.run(*args) on a worker,
                                        reserving one CPU; done(handle) is
                                        called, from any thread, when it ends
    engine.outcome(handle)              its bytes; WorkerLostError when the
                                        worker died under it
    engine.cancel(handles)              stop them (a running Dask task runs on)
    engine.close()                      at exit: what the engine started goes

Each engine is imported only here, only when a cluster is asked for.
"""
import atexit
import logging
import os
import subprocess
import sys
import threading

from ..pool import WorkerLostError
from . import worker

START_TIMEOUT = 120.0


def _lost(engine, exc):
    return WorkerLostError('a %s worker died while running this task (%s: %s)'
                           % (engine, type(exc).__name__, exc))


class DaskEngine:
    name = 'Dask'

    def __init__(self, scheduler=None):
        import distributed
        self._distributed = distributed
        self._cluster = None
        self._workers = None
        if scheduler is None:
            scheduler = self._start_local()
        self.client = distributed.Client(scheduler, set_as_default=False)
        if self._workers is not None:
            self.client.wait_for_workers(os.cpu_count() or 1, timeout=START_TIMEOUT)

    def _start_local(self):
        """A scheduler in this process and one worker process per CPU, each
        of one thread. The workers are fresh interpreters started by
        command, not copies of this program: they never import its script."""
        import dask
        distributed = self._distributed
        # A task whose worker dies fails (as in a local pool), not retried.
        with dask.config.set({'distributed.scheduler.allowed-failures': 0}):
            self._cluster = distributed.LocalCluster(
                n_workers=0, host='127.0.0.1', dashboard_address='127.0.0.1:0',
                processes=True)
        env = dict(os.environ)
        env.pop('CMP_CLUSTER', None)
        # In the program's process group: Ctrl-C, or a kill of the group,
        # reaches them too; and they end when the scheduler is gone.
        self._workers = subprocess.Popen(
            [sys.executable, '-m', 'distributed.cli.dask_worker', self._cluster.scheduler_address,
             '--nworkers', str(os.cpu_count() or 1), '--nthreads', '1',
             '--host', '127.0.0.1', '--no-dashboard', '--death-timeout', '30'],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        return self._cluster.scheduler_address

    def cpus(self):
        return sum(self.client.nthreads().values()) or 1

    def submit(self, args, maxtasks, done):
        fut = self.client.submit(worker.run, *args, pure=False)
        fut.add_done_callback(done)
        return fut

    def outcome(self, handle):
        try:
            return handle.result()
        except self._distributed.KilledWorker as e:
            raise _lost(self.name, e) from None

    def cancel(self, handles):
        if handles:
            self.client.cancel(list(handles), force=True)

    def close(self):
        try:
            self.client.close()
        finally:
            if self._workers is not None:
                _stop(self._workers)
            if self._cluster is not None:
                self._cluster.close()


class RayEngine:
    name = 'Ray'

    def __init__(self, address=None):
        import ray
        import ray.exceptions as rx
        self._ray = ray
        self._lost_errors = (rx.WorkerCrashedError, rx.NodeDiedError, rx.LocalRayletDiedError,
                             rx.ObjectLostError)
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        if address is not None or os.environ.get('RAY_ADDRESS'):
            ray.init(address=address, **quiet)      # ray://..., or Ray's RAY_ADDRESS
        else:
            # A new local Ray of our own, never one found running here (it may
            # be someone else's), on loopback only.
            _loopback_only(ray)
            ray.init(address='local', include_dashboard=False, _node_ip_address='127.0.0.1',
                     **quiet)
        self._remote = {}           # maxtasks -> the remote function
        _raylet_messages_to_stderr(ray)

    def cpus(self):
        return int(self._ray.cluster_resources().get('CPU', 1)) or 1

    def submit(self, args, maxtasks, done):
        fn = self._remote.get(maxtasks)
        if fn is None:
            # No retries: a task lost with its worker fails, as in a local pool.
            fn = self._remote[maxtasks] = self._ray.remote(
                num_cpus=1, max_retries=0, max_calls=maxtasks or 0)(worker.run)
        ref = fn.remote(*args)
        ref.future().add_done_callback(lambda f, ref=ref: done(ref))
        return ref

    def outcome(self, handle):
        try:
            return self._ray.get(handle)
        except self._lost_errors as e:
            raise _lost(self.name, e) from None

    def cancel(self, handles):
        for ref in handles:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass

    def close(self):
        self._ray.shutdown()


def _loopback_only(ray):
    """Make the Ray this process starts listen on 127.0.0.1 alone: Ray's own
    switch for single-machine clusters, read by this process (its constant)
    and by the processes it starts (the environment)."""
    os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '0'
    constants = getattr(ray._private, 'ray_constants', None)
    if constants is not None and hasattr(constants, 'ENABLE_RAY_CLUSTER'):
        constants.ENABLE_RAY_CLUSTER = False


def _raylet_messages_to_stderr(ray):
    """Ray prints its raylets' messages ('A worker died or was killed...')
    on the program's stdout, among the program's own output: send them to
    stderr. (A private function of Ray's; left alone if it is not there.)"""
    module = getattr(ray._private, 'worker', None)
    original = getattr(module, 'print_to_stdstream', None)
    if original is None or getattr(original, 'cmp_patched', False):
        return

    def print_to_stdstream(data, *args, **kwds):
        if isinstance(data, dict) and data.get('pid') == 'raylet':
            data = dict(data, is_err=True)
        return original(data, *args, **kwds)
    print_to_stdstream.cmp_patched = True
    module.print_to_stdstream = print_to_stdstream


def _stop(proc):
    """Stop the workers' command: it stops the workers it started."""
    for stop in (proc.terminate, proc.kill):
        try:
            stop()
            proc.wait(10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass


# ---------------------------------------------------------------------------
# One engine per address per process, closed at exit

_engines = {}
_lock = threading.Lock()
_forked = []        # set in a child forked from a process with an engine


def _after_fork():
    if _engines:
        _forked.append(True)
        _engines.clear()


os.register_at_fork(after_in_child=_after_fork)


def connect(engine, target):
    """The engine for ('dask' | 'ray', target or None), started or joined once."""
    key = (engine, target)
    if _forked:
        # Dask's and Ray's clients run threads and event loops that a
        # forked child does not have: it would hang.
        raise RuntimeError('a cluster pool cannot be used in a process forked from one '
                           'that used the cluster; start this child with the spawn or '
                           'forkserver start method')
    with _lock:
        e = _engines.get(key)
        if e is None:
            e = _engines[key] = (DaskEngine if engine == 'dask' else RayEngine)(target)
            # After the engine's own import registered its exit handlers, so
            # that this runs before them.
            atexit.register(_close, key)
        return e


def _close(key):
    e = _engines.pop(key, None)
    if e is not None:
        try:
            e.close()
        except Exception:
            pass
