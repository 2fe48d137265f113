"""The cluster Pool: cmp's Pool front end (results, ordering, chunking, lazy
imap, callbacks) over an engine's tasks instead of local workers.

Each chunk of work is one engine task that reserves one CPU. At most
`processes` run at once, as in a local pool of that many workers: the
pool's dispatcher thread submits the next when one ends. Every part of a
task is pickled here, in the submitting thread, with cloudpickle: a function
of __main__ travels by value, and an object that cannot leave this machine
(a Lock, a Queue, a Value, shared memory...) fails its task at once with an
error that says so. The dispatcher is the only thread that sets results, so
callbacks run there, as in the stdlib's result handler thread.
"""
import collections
import ctypes
import itertools
import os
import queue
import sys
import threading
import traceback
import uuid

import cloudpickle

from .. import pool as _pool
from .. import util
from . import connect

RUN, CLOSE, TERMINATE = _pool.RUN, _pool.CLOSE, _pool.TERMINATE


# ---------------------------------------------------------------------------
# Pickling for another machine

def _machine_bound_types():
    from .. import connection, managers, queues, shared_memory, sharedctypes, synchronize
    return (synchronize.SemLock, synchronize.Condition, synchronize.Event,
            synchronize.Barrier, queues.Queue, queues.SimpleQueue, queues._SimpleRing,
            connection.Connection, sharedctypes.SharedValue, sharedctypes.SharedArray,
            sharedctypes.SynchronizedBase, shared_memory.SharedMemory,
            shared_memory.ShareableList, managers.BaseProxy, managers.BaseManager, _pool.Pool)


_BOUND = None
_CDATA = ctypes.c_int.__mro__[-2]     # every ctypes object's base; sharedctypes' ones
                                      # over shared memory keep it in _wrapper


def _cannot_leave(what):
    return RuntimeError(
        '%s objects cannot be sent to a cluster worker: they live in this machine (its '
        'shared memory, descriptors or processes). Locks, Queues, Pipes, Values, Arrays, '
        'shared memory, managers and pools cannot cross machines: pass plain data and '
        'use the results' % what)


class _Shipper(cloudpickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, _BOUND) or (isinstance(obj, _CDATA) and hasattr(obj, '_wrapper')):
            raise _cannot_leave(type(obj).__name__)
        return super().reducer_override(obj)


def ship(obj):
    """obj pickled for a cluster worker."""
    global _BOUND
    if _BOUND is None:
        _BOUND = _machine_bound_types()
        # A spawned child's script is __mp_main__: by value too, as __main__.
        if '__mp_main__' in sys.modules:
            cloudpickle.register_pickle_by_value(sys.modules['__mp_main__'])
    f = _Bytes()
    try:
        _Shipper(f, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
    except RuntimeError as e:
        # cmp objects that refuse pickling outside spawning, reached another way
        if 'through inheritance' in str(e):
            raise _cannot_leave(str(e).split(' objects ')[0]) from None
        raise
    return f.getvalue()


class _Bytes(list):
    write = list.append

    def getvalue(self):
        return b''.join(self)


# ---------------------------------------------------------------------------
# The machinery behind the front end

class _State:
    """The pool's state; wake() nudges the dispatcher (see pool._PoolCache)."""
    __slots__ = ('value', 'events')

    def __init__(self, events):
        self.value = _pool.INIT
        self.events = events

    def wake(self):
        self.events.put(None)


class _ClusterWorkers(_pool._Workers):
    """What pool.Pool expects of its _Workers, done by an engine: put,
    put_apply, fail, repopulate, handle_results, handle_workers, join."""

    def __init__(self, engine, processes, initializer, initargs, maxtasks):
        # (not the local pool's __init__: no rings, no worker slots)
        self.engine = engine
        self.processes = processes
        self.maxtasks = maxtasks
        self.events = queue.SimpleQueue()   # for the dispatcher: tasks, ends, wake-ups
        self.state = _State(self.events)
        self.cache = _pool._PoolCache(state=self.state)
        self.pool = []
        self.threads = []
        self.feeders = []
        self.token = uuid.uuid4().hex
        self.head = ship((initializer, initargs, maxtasks))
        self.fcache = {}                    # function -> its pickle
        self.pending = collections.deque()  # (job, idx, task args) not yet submitted
        self.running = {}                   # engine handle -> (job, idx)

    # -- submitting (any thread) ----------------------------------------------

    def _func(self, func):
        try:
            blob = self.fcache.get(func)
        except TypeError:                   # unhashable callable
            return ship(func)
        if blob is None:
            blob = ship(func)
            if len(self.fcache) < 256:
                self.fcache[func] = blob
        return blob

    def _task(self, job, idx, kind, func, payload):
        try:
            args = (self.token, self.head, self._func(func), kind, ship(payload))
        except Exception as e:
            self.fail(job, idx, e)
        else:
            self.pending.append((job, idx, args))

    def put(self, tasks):
        for task in tasks:
            self._task(*task)
        self.events.put(None)

    def put_apply(self, job, func, args, kwds):
        self.put([(job, 0, _pool._APPLY, func, (tuple(args), dict(kwds)))])

    def fail(self, job, idx, exc):
        self.events.put(('fail', job, idx, exc))

    # -- threads (start_thread and start_feeder are the local pool's) ----------

    def repopulate(self):
        """Nothing to start: the engine's workers are there."""

    def handle_workers(self):
        """The engine watches its workers; no thread here."""

    def handle_results(self):
        """The dispatcher: submit while fewer than `processes` run, hand each
        outcome to its result."""
        events, state, cache = self.events, self.state, self.cache
        while True:
            event = events.get()
            try:
                if event is None:
                    pass
                elif event[0] == 'done':
                    self._finished(event[1])
                else:
                    self._set(*event[1:])
            except Exception:
                # Never die here: every result still waiting would hang.
                traceback.print_exc()
            if state.value == TERMINATE:
                break
            while self.pending and len(self.running) < self.processes:
                job, idx, args = self.pending.popleft()
                self._submit(job, idx, args)
            if state.value != RUN and not cache:
                break
        util.debug('cluster pool dispatcher exiting')

    def _submit(self, job, idx, args):
        try:
            handle = self.engine.submit(args, self.maxtasks,
                                        lambda h: self.events.put(('done', h)))
        except Exception as e:
            self._set(job, idx, e)
        else:
            self.running[handle] = (job, idx)

    def _finished(self, handle):
        where = self.running.pop(handle, None)
        if where is None:
            return
        try:
            ok, value, out, err = cloudpickle.loads(self.engine.outcome(handle))
        except Exception as e:
            ok, value, out, err = False, e, '', ''
        for text, stream in ((out, sys.stdout), (err, sys.stderr)):
            if text and stream is not None:
                stream.write(text)
                stream.flush()
        self._set(*where, value, ok)

    def _set(self, job, idx, value, ok=False):
        target = self.cache.get(job)
        if target is not None:
            target._set(idx, (ok, value))

    # -- the end ---------------------------------------------------------------

    def join(self, terminating):
        util.debug('finalizing cluster pool')
        me = threading.current_thread()
        if terminating:
            self.state.value = TERMINATE
        self.events.put(None)
        for t in self.feeders + self.threads:
            if t is not me:
                t.join()
        if self.running:
            try:
                self.engine.cancel(list(self.running))
            except Exception:
                pass        # at exit the engine may be gone already
            self.running.clear()
        self.pending.clear()


class ClusterPool(_pool.Pool):
    """A Pool whose tasks run on a Dask or Ray cluster (see cmp.cluster)."""

    # An imap runs at most 4 tasks per process ahead of its consumer: a
    # cluster's tasks are slow to start, and run in order of submission.
    _imap_window = 0

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, cluster=None):
        if cluster is None:
            cluster = os.environ.get('CMP_CLUSTER')
        if not cluster:
            raise ValueError('ClusterPool needs a cluster address (cluster= or CMP_CLUSTER)')
        self._pool = []
        self._state = _pool.INIT
        self.cluster = cluster
        engine = connect(cluster)
        if processes is None:
            processes = engine.cpus()
        self._Workers = lambda pool_type, ctx, processes, *rest: _ClusterWorkers(
            engine, processes, *rest)
        _pool.Pool.__init__(self, processes, initializer, initargs, maxtasksperchild, context)

    def __repr__(self):
        cls = self.__class__
        return '<%s.%s state=%s processes=%d cluster=%r>' % (
            cls.__module__, cls.__qualname__, self._state, self._processes, self.cluster)
