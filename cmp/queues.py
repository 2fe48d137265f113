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
import pickle
import threading
import weakref
from queue import Empty, Full

from . import _core, context, reduction, util

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

_core._queue_setup(pickle.Pickler, reduction.ForkingPickler._dispatch,
                   reduction.DEFAULT_PROTOCOL, pickle.loads, Empty, Full)


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
        return _rebuild, (type(self), reduction.DupFd(fd), size)

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
        q = ref()
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


class JoinableQueue(Queue):
    """A Queue with task_done() and join() (multiprocessing.JoinableQueue)."""

    _JOINABLE = True

    def task_done(self):
        self._task_done()

    def join(self):
        self._join()


class SimpleQueue(_core.SimpleRing):
    """A simplified queue: put, get, empty, close (multiprocessing.SimpleQueue).

    As in the stdlib, put() writes in the calling thread: it waits while the
    ring is full. get_many/put_many work as on Queue.
    """

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

    __class_getitem__ = classmethod(type(list[int]))
