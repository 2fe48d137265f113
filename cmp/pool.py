"""Pool and ThreadPool (mirrors multiprocessing.pool).

A process Pool keeps two shared-memory rings (cmp.queues): tasks go into one,
put by the calling thread (apply_async, map_async) or, for imap, by a thread
per call that reads the iterable lazily; each worker runs a loop in C
(_core._pool_worker): take a task, unpickle it, call it, pickle the result,
put it into the other ring. The pool's result thread runs a C loop
(_core._pool_dispatch) that hands each result to its AsyncResult, whose
callbacks run there, as in the stdlib.

Workers that die. Every worker has a slot in shared memory naming the task
it is running (written before the task leaves the ring, see
src/module/pool.c). The pool's worker thread waits on the workers'
sentinels; when one dies it fails exactly the task that worker held with
WorkerLostError (naming the worker and its exit code) and starts a new
worker. The stdlib's Pool hangs forever there.

ThreadPool runs the same API on threads, with Python loops (no pickling).
"""
import collections
import itertools
import os
import queue
import select
import signal
import sys
import threading
import traceback
import types
import warnings

from . import _core, _versions, util
from . import context as _context
from .context import ProcessError, TimeoutError
from .connection import wait  # noqa: F401  (a name of the stdlib's pool)

get_context = _context._default_context.get_context     # the stdlib's pool has it

__all__ = ['Pool', 'ThreadPool']

INIT = 'INIT'
RUN = 'RUN'
CLOSE = 'CLOSE'
TERMINATE = 'TERMINATE'

job_counter = itertools.count()

_APPLY = _core.POOL_TASK_APPLY
_MAP = _core.POOL_TASK_MAP
_STARMAP = _core.POOL_TASK_STARMAP
_STOP = _core.POOL_TASK_STOP


def mapstar(args):
    return list(map(*args))


def starmapstar(args):
    return list(itertools.starmap(args[0], args[1]))


# ---------------------------------------------------------------------------
# Exceptions

class RemoteTraceback(Exception):
    def __init__(self, tb):
        self.tb = tb

    def __str__(self):
        return self.tb


class ExceptionWithTraceback:
    """A task's exception on its way back: re-raised with the worker's
    traceback as its __cause__, as the stdlib does."""

    def __init__(self, exc, tb):
        tb = ''.join(traceback.format_exception(type(exc), exc, tb))
        self.exc = exc
        self.tb = '\n"""\n%s"""' % tb

    def __reduce__(self):
        return rebuild_exc, (self.exc, self.tb)


def rebuild_exc(exc, tb):
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class MaybeEncodingError(Exception):
    """Wraps possible unpickleable errors, so they can be safely sent."""

    def __init__(self, exc, value):
        self.exc = repr(exc)
        self.value = repr(value)
        super().__init__(self.exc, self.value)

    def __str__(self):
        return "Error sending result: '%s'. Reason: '%s'" % (self.value, self.exc)

    def __repr__(self):
        return "<%s: %s>" % (self.__class__.__name__, self)


class WorkerLostError(ProcessError):
    """A pool worker died while it ran this task (cmp only: the stdlib hangs)."""


def _wrap_exception(exc):
    return ExceptionWithTraceback(exc, exc.__traceback__)


def _bare_exception(exc):
    return exc


def _exit_description(code):
    if code is not None and code < 0:
        try:
            return 'exit code %d (%s)' % (code, signal.Signals(-code).name)
        except ValueError:
            pass
    return 'exit code %s' % (code,)


# ---------------------------------------------------------------------------
# The worker

class _SlotBlock:
    """The workers' slots (a _core.SharedBlock), passed to a worker: as is
    under fork, by descriptor while spawning."""
    __slots__ = ('block',)

    def __init__(self, block):
        self.block = block

    def __reduce__(self):
        from . import context, reduction, synchronize
        context.assert_spawning(self)
        fd, offset, size = self.block._shm_handle()
        return synchronize._rebuild_block, (reduction.DupFd(fd), offset, size)


def worker(inqueue, outqueue, initializer=None, initargs=(), maxtasks=None,
           wrap_exception=False, slots=None, slot=0):
    """A pool worker: run initializer(*initargs), then the C task loop until a
    stop task or maxtasks tasks."""
    if (maxtasks is not None) and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError("Maxtasks {!r} is not valid".format(maxtasks))
    if isinstance(slots, _SlotBlock):
        slots = slots.block
    if initializer is not None:
        initializer(*initargs)
    done = _core._pool_worker(inqueue, outqueue, slots, slot, maxtasks,
                              _wrap_exception if wrap_exception else _bare_exception,
                              MaybeEncodingError)
    util.debug('worker exiting after %d tasks' % done)


# ---------------------------------------------------------------------------
# Results

class _Waiters:
    """One condition for all of a pool's results: a result that becomes ready
    notifies only when someone waits (no Event per task)."""
    __slots__ = ('cond', 'count')

    def __init__(self):
        self.cond = threading.Condition(threading.Lock())
        self.count = 0

    def notify(self):
        if self.count:
            with self.cond:
                self.cond.notify_all()

    def wait(self, ready, timeout):
        with self.cond:
            self.count += 1
            try:
                return self.cond.wait_for(ready, timeout)
            finally:
                self.count -= 1


def _report_callback_error(cb):
    # The stdlib's result thread dies here (and every get() hangs); cmp
    # reports the error and goes on.
    print('Exception in pool callback %r:' % (cb,), file=sys.stderr)
    traceback.print_exc()


class ApplyResult:

    def __init__(self, pool, callback, error_callback):
        self._pool = pool
        self._waiters = pool._waiters
        self._job = next(job_counter)
        self._cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback
        self._ready = False
        self._cache[self._job] = self

    def ready(self):
        return self._ready

    def successful(self):
        if not self._ready:
            raise ValueError("{0!r} not ready".format(self))
        return self._success

    def wait(self, timeout=None):
        if not self._ready:
            self._waiters.wait(self.ready, timeout)

    def get(self, timeout=None):
        if not self._ready:
            self._waiters.wait(self.ready, timeout)
            if not self._ready:
                raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, i, obj):
        self._success, self._value = obj
        self._finish()

    def _finish(self):
        """Run the callback, mark the result ready and wake its waiters."""
        cb = self._callback if self._success else self._error_callback
        if cb is not None:
            try:
                cb(self._value)
            except BaseException:
                _report_callback_error(cb)
        self._ready = True
        self._cache.pop(self._job, None)
        self._pool = None
        self._waiters.notify()

    __class_getitem__ = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


class MapResult(ApplyResult):

    def __init__(self, pool, chunksize, length, callback, error_callback):
        ApplyResult.__init__(self, pool, callback, error_callback=error_callback)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        if chunksize <= 0:
            self._number_left = 0
            self._ready = True
            del self._cache[self._job]
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _set(self, i, success_result):
        self._number_left -= 1
        success, result = success_result
        if success and self._success:
            self._value[i * self._chunksize:(i + 1) * self._chunksize] = result
        elif not success and self._success:
            self._success = False      # only the first exception is kept
            self._value = result
        if self._number_left == 0:
            self._finish()


class IMapIterator:

    def __init__(self, pool):
        self._pool = pool
        self._cond = threading.Condition(threading.Lock())
        self._job = next(job_counter)
        self._cache = pool._cache
        self._items = collections.deque()
        self._index = 0
        self._length = None
        self._unsorted = {}
        self._taken = 0         # items returned by next(): the task thread's window
        self._cache[self._job] = self

    def __iter__(self):
        return self

    def next(self, timeout=None):
        with self._cond:
            try:
                item = self._items.popleft()
            except IndexError:
                if self._index == self._length:
                    self._pool = None
                    raise StopIteration from None
                self._cond.wait(timeout)
                try:
                    item = self._items.popleft()
                except IndexError:
                    if self._index == self._length:
                        self._pool = None
                        raise StopIteration from None
                    raise TimeoutError from None
            self._taken += 1
            if self._taken & 15 == 0:
                self._cond.notify_all()     # the task thread may wait for room
        success, value = item
        if success:
            return value
        raise value

    __next__ = next

    def _set(self, i, obj):
        with self._cond:
            if self._index == i:
                self._items.append(obj)
                self._index += 1
                while self._index in self._unsorted:
                    obj = self._unsorted.pop(self._index)
                    self._items.append(obj)
                    self._index += 1
                self._cond.notify_all()
            else:
                self._unsorted[i] = obj
            if self._index == self._length:
                self._cache.pop(self._job, None)
                self._pool = None

    def _set_length(self, length):
        with self._cond:
            self._length = length
            if self._index == self._length:
                self._cond.notify_all()
                self._cache.pop(self._job, None)
                self._pool = None

    def _wait_room(self, submitted, window, state):
        """Task thread: wait until fewer than `window` submitted items are
        not yet taken by next() (so an endless iterable is read lazily)."""
        with self._cond:
            while submitted - self._taken >= window and state.value != TERMINATE \
                    and self._job in self._cache:
                self._cond.wait(0.1)


class IMapUnorderedIterator(IMapIterator):

    def _set(self, i, obj):
        with self._cond:
            self._items.append(obj)
            self._index += 1
            self._cond.notify_all()
            if self._index == self._length:
                self._cache.pop(self._job, None)
                self._pool = None


# ---------------------------------------------------------------------------
# Pool

class _State:
    """The pool's state, shared with its threads (which must not reference
    the pool, so that an abandoned pool is collected and finalized)."""
    __slots__ = ('value', 'wake_r', 'wake_w')

    def __init__(self):
        self.value = INIT
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def wake(self):
        try:
            os.write(self.wake_w, b'\0')
        except (BlockingIOError, OSError):
            pass

    def drain(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self):
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wake_r = self.wake_w = -1


class _PoolCache(dict):
    """The pool's jobs by id; wakes the worker thread when it empties while
    the pool is closing (so close(); join() ends when the work is done)."""

    def __init__(self, *args, state, **kwds):
        self._state = state
        super().__init__(*args, **kwds)

    def __delitem__(self, item):
        super().__delitem__(item)
        if not self and self._state.value != RUN:
            self._state.wake()

    def pop(self, *args):
        r = super().pop(*args)
        if not self and self._state.value != RUN:
            self._state.wake()
        return r


# How many items an imap may have submitted beyond those taken by next(),
# and how many tasks its thread puts at a time (from a sized iterable).
_IMAP_WINDOW = 4096
_IMAP_BATCH = 256


class _Workers:
    """A process pool's machinery, shared with its threads and its finalizer
    (none of which may reference the Pool itself): the task and result
    queues, the workers and their slots, the threads."""

    wrap_exception = True

    def __init__(self, pool_type, ctx, processes, initializer, initargs, maxtasks):
        self.pool_type = pool_type
        self.ctx = ctx
        self.processes = processes
        self.initializer = initializer
        self.initargs = initargs
        self.maxtasks = maxtasks
        self.state = _State()
        self.cache = _PoolCache(state=self.state)
        self.pool = []
        self.free_slots = list(range(processes - 1, -1, -1))
        self.seq = itertools.count(1)
        self.threads = []
        self.feeders = []           # imap's task threads
        self.setup()

    # -- transport -----------------------------------------------------------

    def setup(self):
        from .queues import Queue, _SimpleRing
        self.inqueue = Queue(ctx=self.ctx)
        self.outqueue = _SimpleRing(ctx=self.ctx)
        self.slots = _core.SharedBlock(_core.POOL_SLOT_BYTES * self.processes)
        self.fcache = {}        # function -> its pickle (see src/module/pool.c)

    def put(self, tasks):
        """Put [(job, idx, kind, func, payload)]; a task that cannot be
        pickled fails."""
        seq = self.seq
        failures = _core._pool_put_tasks(
            self.inqueue, self.fcache, [(next(seq), job, idx, kind, func, payload)
                                        for job, idx, kind, func, payload in tasks])
        for item, exc in failures:
            self.fail(item[1], item[2], exc)

    def put_apply(self, job, func, args, kwds):
        try:
            _core._pool_put_task(self.inqueue, self.fcache, next(self.seq), job, 0, _APPLY,
                                 func, (args if type(args) is tuple else tuple(args),
                                        kwds if type(kwds) is dict else dict(kwds)))
        except Exception as e:
            self.fail(job, 0, e)

    def fail(self, job, idx, exc):
        target = self.cache.get(job)
        if target is not None:
            target._set(idx, (False, exc))

    def stop_workers(self, n):
        _core._pool_put_tasks(self.inqueue, None, [(0, 0, 0, _STOP, None, None)] * n)

    def stop_results(self):
        _core._pool_post(self.outqueue, 0, 0, 0, _core.POOL_RES_STOP, None)

    def handle_results(self):
        _core._pool_dispatch(self.outqueue, self.cache, self.processes)
        util.debug('result handler exiting')

    # -- workers -------------------------------------------------------------

    def new_worker(self, slot):
        w = self.pool_type.Process(
            self.ctx, target=worker,
            args=(self.inqueue, self.outqueue, self.initializer, self.initargs,
                  self.maxtasks, self.wrap_exception, _SlotBlock(self.slots), slot))
        w.name = w.name.replace('Process', 'PoolWorker')
        w.daemon = True
        w._pool_slot = slot
        w.start()
        util.debug('added worker')
        return w

    def repopulate(self):
        while True:
            try:
                slot = self.free_slots.pop()    # Pool._repopulate_pool may race us
            except IndexError:
                break
            try:
                self.pool.append(self.new_worker(slot))
            except BaseException:
                self.free_slots.append(slot)
                raise

    def sentinels(self):
        return {w.sentinel: w for w in self.pool}

    def worker_ended(self, w):
        """After worker w ended: what fails the task it held, if any, as
        (seq, job, idx, word3, WorkerLostError), for the result queue."""
        w.join()
        lost = None
        if self.state.value != TERMINATE:
            seq, job, idx = _core._pool_slot(self.slots, w._pool_slot)
            if seq:
                err = WorkerLostError(
                    'pool worker %s (pid %s) died with %s while running this task'
                    % (w.name, w.pid, _exit_description(w.exitcode)))
                lost = (seq, job, idx, (w._pool_slot << 32) | _core.POOL_RES_DEAD, err)
        if w._popen is not None:
            w._popen.close()        # its pidfd; pid and exitcode stay readable
        return lost

    def post_lost(self, lost):
        _core._pool_post(self.outqueue, *lost)

    def handle_workers(self):
        state, cache, pool = self.state, self.cache, self.pool
        poller = select.poll()
        poller.register(state.wake_r, select.POLLIN)
        watched = {}
        while state.value == RUN or (cache and state.value != TERMINATE):
            current = self.sentinels()
            for fd in watched.keys() - current.keys():
                poller.unregister(fd)
            for fd in current.keys() - watched.keys():
                poller.register(fd, select.POLLIN)
            watched = current
            poller.poll()
            state.drain()
            if state.value == TERMINATE:
                break           # the finalizer joins the workers
            ended = [w for w in pool if w.exitcode is not None]
            for w in ended:
                pool.remove(w)
                lost = self.worker_ended(w)
                # Before a new worker takes the slot: the dispatcher tells a
                # finished task from a lost one by the slot's last result.
                if lost is not None:
                    self.post_lost(lost)
                self.free_slots.append(w._pool_slot)
            if ended and state.value != TERMINATE:
                try:
                    self.repopulate()
                except Exception:
                    util.info('could not start a pool worker', exc_info=True)
        if state.value != TERMINATE:
            self.stop_workers(len(pool))
        util.debug('worker handler exiting')

    def kill_workers(self):
        for p in list(self.pool):
            if p.exitcode is None:
                p.terminate()

    def join_workers(self):
        # They stay listed, as in the stdlib; their descriptors are released.
        for p in list(self.pool):
            p.join()
            # A context's Process may be any object with the Process API.
            popen = getattr(p, '_popen', None)
            if popen is not None:
                popen.close()

    # -- threads -------------------------------------------------------------

    def start_thread(self, target, name):
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def start_feeder(self, feed):
        """An imap's thread: feeds its tasks (lazily: see _imap_feeder)."""
        self.feeders = [t for t in self.feeders if t.is_alive()]
        t = threading.Thread(target=feed, args=(self.state,), name='PoolTaskHandler',
                             daemon=True)
        t.start()
        self.feeders.append(t)

    def join(self, terminating):
        """Stop and join everything (the pool's finalizer)."""
        util.debug('finalizing pool')
        result_handler, worker_handler = (self.threads + [None, None])[:2]
        me = threading.current_thread()
        if terminating:
            # Signal the workers first: they die while the threads stop.
            self.state.value = TERMINATE
            util.debug('terminating workers')
            self.kill_workers()
        self.state.wake()
        if worker_handler is not None and me is not worker_handler:
            worker_handler.join()
        if terminating:
            self.kill_workers()     # any it started meanwhile
        for t in self.feeders:
            if me is not t:
                t.join()
        if result_handler is not None:
            self.stop_results()
            if me is not result_handler:
                result_handler.join()
        util.debug('joining pool workers')
        self.join_workers()
        self.state.close()
        # Nothing uses them now: their segments and descriptors go.
        self.inqueue = self.outqueue = self.slots = None


class Pool:
    """A pool of worker processes (multiprocessing.Pool)."""

    _Workers = _Workers
    _imap_window = _IMAP_WINDOW

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)

    def __new__(cls, *args, cluster=None, **kwds):
        # cluster= (or the runner's CMP_CLUSTER): the tasks run on a Dask or
        # Ray cluster instead (cmp.cluster); cluster=False keeps them here.
        if cluster is None:
            cluster = os.environ.get('CMP_CLUSTER')
        if cls is Pool and cluster:
            from .cluster import pool_type
            return super().__new__(pool_type(cluster))
        return super().__new__(cls)

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, cluster=None):
        self._pool = []
        self._state = INIT
        self._ctx = context or _context._default_context.get_context()
        if processes is None:
            processes = _versions.DEFAULT_WORKERS() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        self._processes = processes
        self._maxtasksperchild = maxtasksperchild
        self._initializer = initializer
        self._initargs = initargs

        w = self._w = self._Workers(type(self), self._ctx, processes, initializer, initargs,
                                    maxtasksperchild)
        self._pool = w.pool
        self._cache = w.cache
        self._waiters = _Waiters()
        # The result thread first: it starts faster before the workers
        # compete for the CPU.
        w.state.value = RUN
        w.start_thread(w.handle_results, 'PoolResultHandler')
        try:
            w.repopulate()
        except Exception:
            w.join(True)
            raise
        w.start_thread(w.handle_workers, 'PoolWorkerHandler')
        self._terminate = util.Finalize(self, w.join, args=(True,), exitpriority=15)
        self._state = RUN

    def __del__(self, _warn=warnings.warn, RUN=RUN):
        if self._state == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning,
                  source=self)

    def __repr__(self):
        cls = self.__class__
        return (f'<{cls.__module__}.{cls.__qualname__} '
                f'state={self._state} pool_size={len(self._pool)}>')

    def __reduce__(self):
        raise NotImplementedError(
            'pool objects cannot be passed between processes or pickled')

    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _repopulate_pool(self):
        """Start workers in the free places of the pool (the worker handler
        does this by itself as workers end; code written for the stdlib
        calls it too)."""
        self._w.repopulate()

    _maintain_pool = _repopulate_pool      # cmp's handler joins the ended workers

    # -- the API -------------------------------------------------------------

    def apply(self, func, args=(), kwds={}):
        return self.apply_async(func, args, kwds).get()

    def map(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, _MAP, chunksize).get()

    def starmap(self, func, iterable, chunksize=None):
        return self._map_async(func, iterable, _STARMAP, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, _STARMAP, chunksize, callback, error_callback)

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_async(func, iterable, _MAP, chunksize, callback, error_callback)

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        self._w.put_apply(result._job, func, args, kwds)
        return result

    def _map_async(self, func, iterable, kind, chunksize=None, callback=None,
                   error_callback=None):
        self._check_running()
        if not hasattr(iterable, '__len__'):
            iterable = list(iterable)
        if chunksize is None:
            # (len(self._pool) as the stdlib; a dead worker may be leaving it)
            chunksize, extra = divmod(len(iterable), (len(self._pool) or self._processes) * 4)
            if extra:
                chunksize += 1
        if len(iterable) == 0:
            chunksize = 0
        result = MapResult(self, chunksize, len(iterable), callback,
                           error_callback=error_callback)
        if chunksize > 0:
            job = result._job
            if type(iterable) in (list, tuple, range):
                # slices: C copies (and a range's are ranges, pickled as such)
                self._w.put([(job, i, kind, func, iterable[k:k + chunksize])
                             for i, k in enumerate(range(0, len(iterable), chunksize))])
                return result
            it = iter(iterable)
            tasks = []
            try:
                while True:
                    x = tuple(itertools.islice(it, chunksize))
                    if not x:
                        break
                    tasks.append((job, len(tasks), kind, func, x))
            except Exception as e:
                self._w.put(tasks)
                self._w.fail(job, len(tasks), e)
            else:
                self._w.put(tasks)
        return result

    def imap(self, func, iterable, chunksize=1):
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def _imap(self, cls, func, iterable, chunksize):
        self._check_running()
        if chunksize != 1 and chunksize < 1:
            raise ValueError("Chunksize must be 1+, not {0:n}".format(chunksize))
        result = cls(self)
        self._w.start_feeder(
            _imap_feeder(self._w, result, func, iterable, chunksize,
                         max(self._imap_window // chunksize, 4 * self._processes)))
        if chunksize == 1:
            return result
        return (item for chunk in result for item in chunk)

    def close(self):
        util.debug('closing pool')
        if self._state == RUN:
            self._state = CLOSE
            self._w.state.value = CLOSE
            self._w.state.wake()

    def terminate(self):
        util.debug('terminating pool')
        self._state = TERMINATE
        self._terminate()

    def join(self):
        util.debug('joining pool')
        if self._state == RUN:
            raise ValueError("Pool is still running")
        elif self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        if self._terminate.still_active():
            # join(False): after close() the workers end when the work is done
            self._terminate.cancel()
            self._w.join(self._state == TERMINATE)

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


def _imap_feeder(w, result, func, iterable, chunksize, window):
    """The job imap gives the task thread: submit tasks while fewer than
    `window` are ahead of the consumer."""
    job = result._job
    batch = _IMAP_BATCH if hasattr(iterable, '__len__') else 1

    def feed(state):
        n = 0
        tasks = []
        try:
            it = iter(iterable)
            while state.value != TERMINATE:
                result._wait_room(n, window, state)
                if state.value == TERMINATE:
                    return
                tasks = []
                for _ in range(batch):
                    if chunksize == 1:
                        try:
                            x = next(it)
                        except StopIteration:
                            break
                        tasks.append((job, n + len(tasks), _APPLY, func, ((x,), {})))
                    else:
                        x = tuple(itertools.islice(it, chunksize))
                        if not x:
                            break
                        tasks.append((job, n + len(tasks), _MAP, func, x))
                w.put(tasks)
                n += len(tasks)
                if len(tasks) < batch:
                    break
                tasks = []
        except Exception as e:
            w.put(tasks)
            n += len(tasks)
            w.fail(job, n, e)
            n += 1
        result._set_length(n)
    return feed


# ---------------------------------------------------------------------------
# ThreadPool

class _ThreadWorkers(_Workers):
    """ThreadPool's machinery: queue.SimpleQueue and Python loops."""

    wrap_exception = False

    def setup(self):
        self.inqueue = queue.SimpleQueue()
        self.outqueue = queue.SimpleQueue()

    def put_apply(self, job, func, args, kwds):
        self.inqueue.put((job, 0, _APPLY, func, (args, kwds)))

    def put(self, tasks):
        put = self.inqueue.put
        for task in tasks:
            put(task)

    def stop_workers(self, n):
        for _ in range(n):
            self.inqueue.put(None)

    def stop_results(self):
        self.outqueue.put(None)

    def handle_results(self):
        cache = self.cache
        for job, idx, value in iter(self.outqueue.get, None):
            target = cache.get(job)
            if target is not None:
                target._set(idx, value)
            target = value = None

    def new_worker(self, slot):
        w = self.pool_type.Process(self.ctx, target=_thread_worker,
                                   args=(self.inqueue, self.outqueue, self.initializer,
                                         self.initargs))
        w.daemon = True
        w._pool_slot = slot
        w.start()
        return w

    def sentinels(self):
        return {}

    def worker_ended(self, w):
        w.join()
        return None

    def kill_workers(self):
        # Threads cannot be killed: each stops after its current task, and
        # terminate() does not wait for them (as the stdlib).
        self.stop_workers(len(self.pool))
        self.pool.clear()

    def join_workers(self):
        for w in list(self.pool):
            if w is not threading.current_thread():
                w.join()
        self.pool.clear()


def _thread_worker(inqueue, outqueue, initializer, initargs):
    if initializer is not None:
        initializer(*initargs)
    get, put = inqueue.get, outqueue.put
    while True:
        task = get()
        if task is None:
            break
        job, idx, kind, func, payload = task
        try:
            if kind == _APPLY:
                value = (True, func(*payload[0], **payload[1]))
            elif kind == _MAP:
                value = (True, list(map(func, payload)))
            else:
                value = (True, list(itertools.starmap(func, payload)))
        except Exception as e:
            value = (False, e)
        put((job, idx, value))
        task = func = payload = value = None


class ThreadPool(Pool):
    """A pool of threads (multiprocessing.pool.ThreadPool): the same API,
    without pickling."""

    _Workers = _ThreadWorkers

    @staticmethod
    def Process(ctx, *args, **kwds):
        from .dummy import Process
        return Process(*args, **kwds)

    def __init__(self, processes=None, initializer=None, initargs=()):
        Pool.__init__(self, processes, initializer, initargs)
