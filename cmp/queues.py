"""Queue, JoinableQueue and SimpleQueue (mirrors multiprocessing.queues).

Each queue is a ring of messages in one shared-memory segment (src/core/ring.c).
put() pickles the object and copies it into the ring; get() copies a message
out and unpickles it -- both in C, with the GIL released only while waiting.

An unbounded Queue never blocks put(): when the ring is full (or a message
is larger than half the ring, or another process is streaming a large message
in), the pickled item waits in this process's overflow, and a feeder thread
writes it, keeping this process's order. Process exit waits for the feeder,
as the stdlib's join_thread does, unless cancel_join_thread() was called.
"""
import collections
import operator
import os
import threading
import weakref
from queue import Empty, Full

from . import _core, _versions, connection, context, reduction, util  # noqa: F401
from .util import Finalize, debug, info, is_exiting, register_after_fork  # noqa: F401

# The stdlib's feeder thread stops when it takes this from its buffer;
# subclasses written for the stdlib (loky's) import it.
_sentinel = object()

__all__ = ['Queue', 'SimpleQueue', 'JoinableQueue']

# Chosen by measurement (1 producer -> 1 consumer, items/s, cmp, median of 3):
#   ring     small ints   1 MiB bytes   4x4 small ints
#   64 KiB      1.08 M         736           432 k
#   256 KiB     3.68 M        1081          1000 k
#   1 MiB       3.51 M        1432           896 k
#   4 MiB       2.09 M        1555           655 k
# Memory is only committed as far as a ring has ever filled: 1,000 queues
# that each carried a message cost ~9 MB; 1,000 full 1 MiB rings, 1 GB.
# Messages above half the ring go through the feeder thread and stream in
# quarter-ring chunks; CMP_QUEUE_RING_SIZE or ring_size= changes it.
DEFAULT_RING_SIZE = 1 << 20

_SEM_VALUE_MAX = 2147483647     # what the stdlib reports as an unbounded queue's _maxsize

def _ring_size(ring_size):
    if ring_size is None:
        env = os.environ.get('CMP_QUEUE_RING_SIZE')
        ring_size = int(env) if env else DEFAULT_RING_SIZE
    return ring_size


def _rebuild(cls, fd, size):
    obj = cls.__new__(cls)
    obj._attach(fd.detach(), size)
    obj._reset()
    return obj


class Queue(_core.Ring):
    """A process-shared FIFO queue (multiprocessing.Queue).

    Beyond the stdlib: put_many(items, block=True, timeout=None) and
    get_many(max_items, block=True, timeout=None) move a batch per lock
    acquisition; ring_size= sets the ring's bytes (a power of two).
    """

    _JOINABLE = False
    _STDLIB_FEEDER = False      # see _FeederQueue

    def __init__(self, maxsize=0, *, ctx=None, ring_size=None):
        if maxsize <= 0:
            maxsize = 0
        elif maxsize > _SEM_VALUE_MAX:
            raise OverflowError('Python int too large to convert to C int')
        maxsize = operator.index(maxsize)
        self._create(_ring_size(ring_size), maxsize, self._JOINABLE)
        self._reset()

    def _reset(self):
        """This process's side: the overflow and its feeder thread."""
        self._opid = os.getpid()
        self._overflow = collections.deque()
        self._feed_lock = threading.Lock()
        self._feeder = None
        self._feeder_done = None
        self._feeder_finalizer = None
        self._joincancelled = False
        self._pending = False

    def _check_pid(self):
        # In a forked child the parent's overflow and feeder are the parent's.
        if self._opid != os.getpid():
            self._reset()

    @property
    def _maxsize(self):
        return self._ring_maxsize or _SEM_VALUE_MAX

    def __reduce__(self):
        context.assert_spawning(self)
        fd, size = self._share()
        # A subclass's __getstate__ (the stdlib's pickles the Queue's state
        # with it) travels too, and its __setstate__ runs on arrival.
        state = self.__getstate__() if _overrides(type(self), '__getstate__') else None
        return _rebuild, (type(self), reduction.DupFd(fd), size), state

    # -- overflow ----------------------------------------------------------

    _FEED_BATCH = 1024

    def _defer(self, items):
        """Called by put() with accepted items (pickled) not in the ring yet."""
        self._check_pid()
        with self._feed_lock:
            self._overflow.extend(items)
            self._pending = True
            if self._feeder is None:
                self._start_feeder()

    def _start_feeder(self):
        done = threading.Event()
        t = threading.Thread(target=Queue._feed, args=(weakref.ref(self), self._overflow,
                                                       self._feed_lock, done),
                             name='QueueFeederThread', daemon=True)
        self._feeder = t
        self._feeder_done = done
        if self._feeder_finalizer is None:
            self._feeder_finalizer = util.Finalize(
                self, Queue._finalize_join, [weakref.ref(self)], exitpriority=-5)
        t.start()

    @staticmethod
    def _feed(ref, overflow, lock, done):
        # Holds the queue only while writing, so an unreferenced queue can go.
        try:
            while True:
                with lock:
                    q = ref()
                    if q is None or not overflow:
                        if q is not None:
                            q._pending = False
                            q._feeder = None
                        return
                    n = min(len(overflow), Queue._FEED_BATCH)
                    batch = [overflow.popleft() for _ in range(n)]
                try:
                    q._write(batch, True)
                except Exception:
                    import traceback
                    traceback.print_exc()
                del q, batch
        finally:
            done.set()

    @staticmethod
    def _finalize_join(ref):
        """Wait for a feeder thread: cmp's, given a weak reference to its
        Queue, or the stdlib's, given one to the Thread (as a subclass's
        _start_thread() registers it, loky's)."""
        q = ref()
        if isinstance(q, threading.Thread):
            util.debug('joining queue thread')
            q.join()
            util.debug('... queue thread joined')
            return
        if q is None:
            return
        if q._joincancelled:
            with q._feed_lock:
                # (a batch the feeder is writing keeps its slots)
                dropped = len(q._overflow)
                q._overflow.clear()
            q._unreserve(dropped)
            return
        util.debug('joining queue thread')
        done = q._feeder_done
        del q
        if done is not None:
            done.wait()
        util.debug('... queue thread joined')

    # -- what code written against the stdlib's internals touches ----------

    # The stdlib's finalizer that a subclass's _start_thread() registers
    # (loky's) to stop the feeder once the buffer is written; it registers
    # _finalize_join (above) to wait for it.
    @staticmethod
    def _finalize_close(buffer, notempty):
        util.debug('telling queue thread to quit')
        with notempty:
            buffer.append(_sentinel)
            notempty.notify()

    def _on_queue_feeder_error(self, e, obj):
        """Called for an item put() could not pickle, in place of raising,
        when a subclass overrides it (concurrent.futures does: its futures
        get the error). The stdlib calls it from its feeder thread."""
        import traceback
        traceback.print_exc()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls._STDLIB_FEEDER:
            return                      # _FeederQueue and its subclasses
        if _overrides(cls, '_start_thread') and Queue in cls.__bases__:
            # It takes the stdlib's feeder thread over: it gets the stdlib's
            # design, _FeederQueue, in place of Queue among its bases.
            cls.__bases__ = tuple(_FeederQueue if b is Queue else b for b in cls.__bases__)
        elif _overrides(cls, '_on_queue_feeder_error'):
            cls.put = Queue._put_reporting

    def _put_reporting(self, obj, block=True, timeout=None):
        try:
            _core.Ring.put(self, obj, block, timeout)
        except Full:
            raise
        except Exception as e:
            if self._closed:
                raise           # closed: ValueError / OSError, as put() says
            self._on_queue_feeder_error(e, obj)

    # Subclasses may replace the ends (torch wraps them; loky's __setstate__
    # restores them).
    _reader = property(lambda self: self._end('reader'),
                       lambda self, end: self._set_end('reader', end))
    _writer = property(lambda self: self._end('writer'),
                       lambda self, end: self._set_end('writer', end))

    def _end(self, side):
        ends = self.__dict__.setdefault('_ends', {})
        if side not in ends:
            ends[side] = _QueueEnd(side)
        return ends[side]

    def _set_end(self, side, end):
        self.__dict__.setdefault('_ends', {})[side] = end

    # -- the stdlib's API beyond put/get -----------------------------------

    def close(self):
        self._closed = True

    def join_thread(self):
        util.debug('Queue.join_thread()')
        assert self._closed, "Queue {0!r} not closed".format(self)
        self._check_pid()
        done = self._feeder_done
        if done is not None:
            done.wait()

    def cancel_join_thread(self):
        util.debug('Queue.cancel_join_thread()')
        self._check_pid()
        self._joincancelled = True

    if _versions.QUEUE_TERMINATE_BROKEN:
        def _terminate_broken(self):
            """Close a queue whose readers are gone (concurrent.futures calls it
            on a broken pool): nothing waits for items no one will read."""
            self._reader.close()
            self.close()
            self.cancel_join_thread()
            self._finalize_join(weakref.ref(self))

    if _versions.QUEUE_GENERIC:
        __class_getitem__ = classmethod(type(list[int]))


class _QueueEnd:
    """Queue._reader / Queue._writer. The stdlib's queue is a pipe, and code
    such as concurrent.futures closes an end to say this process is done
    reading or writing; a ring has no per-process end to release, so close()
    only records it. There is no descriptor to wait on: use get(timeout=...)
    (a SimpleQueue's _reader is a real Connection)."""

    __slots__ = ('_side', 'closed')

    def __init__(self, side):
        self._side = side
        self.closed = False

    def close(self):
        self.closed = True

    def fileno(self):
        raise OSError('a cmp Queue has no %s descriptor: its items are in shared memory '
                      '(use get(timeout=...), or a SimpleQueue, whose _reader is a '
                      'Connection)' % self._side)


def _overrides(cls, name):
    """Whether a subclass of Queue defines name itself."""
    return getattr(cls, name, None) is not getattr(Queue, name, None)


class _FeederQueue(Queue):
    """The stdlib's feeder-thread design, for subclasses that take it over.

    loky's Queue overrides _start_thread() and _feed() to pickle items its
    own way (cloudpickle, for functions defined in __main__) in the stdlib's
    feeder thread. A direct subclass of Queue that overrides _start_thread()
    gets this class as its base instead (Queue.__init_subclass__), and with
    it the stdlib's put(): take a slot of _sem (a ctx.BoundedSemaphore),
    append the item to _buffer and wake the feeder that _start_thread()
    started. The feeder writes each pickled item with _send_bytes(), here
    into the ring, and stops at the _sentinel that close() appends. get()
    reads the ring and gives back the slot. The ring itself is unbounded:
    _sem bounds the queue. Names, state tuple and finalizers are the
    stdlib's.
    """

    _STDLIB_FEEDER = True
    _maxsize = 0            # an attribute here, not Queue's property

    def __init__(self, maxsize=0, *, ctx=None):
        if maxsize <= 0:
            maxsize = _SEM_VALUE_MAX
        ctx = ctx if ctx is not None else context._default_context
        self._create(_ring_size(None), 0, self._JOINABLE)
        self._maxsize = maxsize
        self._opid = os.getpid()
        self._rlock = ctx.Lock()
        self._wlock = ctx.Lock()
        self._sem = ctx.BoundedSemaphore(maxsize)
        self._ignore_epipe = False
        self._reset()
        util.register_after_fork(self, _FeederQueue._reset)

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._ignore_epipe, self._maxsize, self._reader, self._writer,
                self._rlock, self._wlock, self._sem, self._opid)

    def __setstate__(self, state):
        (self._ignore_epipe, self._maxsize, self._reader, self._writer,
         self._rlock, self._wlock, self._sem, self._opid) = state
        self._reset()

    def _reset(self):
        self._notempty = threading.Condition(threading.Lock())
        self._buffer = collections.deque()
        self._thread = None
        self._jointhread = None
        self._joincancelled = False
        self._closed = False
        self._close = None

    def _send_bytes(self, buf):
        self._write([[buf]], False)

    def put(self, obj, block=True, timeout=None):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        if not self._sem.acquire(block, timeout):
            raise Full
        with self._notempty:
            if self._thread is None:
                self._start_thread()
            self._buffer.append(obj)
            self._notempty.notify()

    def put_nowait(self, obj):
        return self.put(obj, False)

    def put_many(self, items, block=True, timeout=None):
        for obj in items:
            self.put(obj, block, timeout)

    def get(self, block=True, timeout=None):
        obj = _core.Ring.get(self, block, timeout)
        self._sem.release()
        return obj

    def get_nowait(self):
        return self.get(False)

    def get_many(self, max_items, block=True, timeout=None):
        items = _core.Ring.get_many(self, max_items, block, timeout)
        for _ in items:
            self._sem.release()
        return items

    def qsize(self):
        return self._maxsize - self._sem._semlock._get_value()

    def full(self):
        return self._sem._semlock._get_value() == 0

    def close(self):
        self._closed = True
        close, self._close = self._close, None
        if close:
            close()

    def join_thread(self):
        util.debug('Queue.join_thread()')
        assert self._closed, "Queue {0!r} not closed".format(self)
        if self._jointhread:
            self._jointhread()

    def cancel_join_thread(self):
        util.debug('Queue.cancel_join_thread()')
        self._joincancelled = True
        try:
            self._jointhread.cancel()
        except AttributeError:
            pass

    if _versions.QUEUE_TERMINATE_BROKEN:
        def _terminate_broken(self):
            """As Queue's: nothing waits for the feeder (writing into a ring
            no one reads, it gets no EPIPE to stop it, as the stdlib's does)."""
            self._reader.close()
            self.close()
            self.cancel_join_thread()


class JoinableQueue(Queue):
    """A Queue with task_done() and join() (multiprocessing.JoinableQueue)."""

    _JOINABLE = True

    def task_done(self):
        self._task_done()

    def join(self):
        self._join()


class SimpleQueue:
    """A simplified queue: put, get, empty, close (multiprocessing.SimpleQueue).

    As in the stdlib it is a Pipe(duplex=False) -- here one whose messages
    go through a shared-memory ring -- so `_reader` and `_writer` are real
    Connections: `connection.wait([q._reader, ...])` works, and so does
    concurrent.futures.ProcessPoolExecutor. On a Pipe channel the ring keeps
    each message whole and takes over from a killed holder, so no locks are
    needed; on a plain pipe (descriptors scarce) `_rlock` and `_wlock`
    serialize readers and writers, as in the stdlib.
    """

    def __init__(self, *, ctx=None):
        self._reader, self._writer = connection.Pipe(duplex=False)
        if self._reader._ring_share() is not None:
            self._rlock = self._wlock = None
        else:
            ctx = ctx if ctx is not None else context._default_context
            self._rlock = ctx.Lock()
            self._wlock = ctx.Lock()
        self._poll = self._reader.poll

    def empty(self):
        return not self._poll()

    def close(self):
        self._reader.close()
        self._writer.close()

    def __getstate__(self):
        context.assert_spawning(self)
        return (self._reader, self._writer, self._rlock, self._wlock)

    def __setstate__(self, state):
        (self._reader, self._writer, self._rlock, self._wlock) = state
        self._poll = self._reader.poll

    def get(self):
        if self._rlock is None:
            return self._reader.recv()
        with self._rlock:
            res = self._reader.recv_bytes()
        return reduction._loads(res)        # unpickled outside the lock

    def put(self, obj):
        if self._wlock is None:
            self._writer.send(obj)
            return
        obj = reduction.ForkingPickler.dumps(obj)
        with self._wlock:
            self._writer.send_bytes(obj)

    __class_getitem__ = classmethod(type(list[int]))


class _SimpleRing(_core.SimpleRing):
    """The Pool's result queue: a SimpleQueue as one bare ring, which the
    Pool's C loops read and write directly (src/module/pool.c)."""

    def __init__(self, *, ctx=None, ring_size=None):
        self._create(_ring_size(ring_size), 0, False)

    def _reset(self):
        pass

    def close(self):
        self._closed = True

    def __reduce__(self):
        context.assert_spawning(self)
        fd, size = self._share()
        return _rebuild, (type(self), reduction.DupFd(fd), size)
