"""Synchronization primitives shared between processes (mirrors
multiprocessing.synchronize).

Every object is a few futex words in a shared-memory arena (src/core/sync.c,
shm.c): no named semaphores, no /dev/shm entries. Lock, RLock, Semaphore,
BoundedSemaphore and Event subclass the C types, so `lock.acquire()` is a
direct C call; Condition and Barrier are thin Python layers over them.

Objects are shared by inheritance: a forked child inherits the mapping; a
child started by spawn or forkserver receives the arena's descriptor while it
is being started. Pickling them at any other time raises RuntimeError, as in
the stdlib.
"""
import sys
import threading
import time

from . import _core, _versions, context, process, reduction, resource_tracker, util  # noqa: F401

__all__ = ['Lock', 'RLock', 'Semaphore', 'BoundedSemaphore', 'Condition', 'Event']

RECURSIVE_MUTEX = _core.RECURSIVE_MUTEX
SEMAPHORE = _core.SEMAPHORE
SEM_VALUE_MAX = _core.SEM_VALUE_MAX


def _assert_spawning(obj, name=None):
    if context.get_spawning_popen() is None:
        raise RuntimeError('%s objects should only be shared between processes'
                           ' through inheritance' % (name or type(obj).__name__))


def _rebuild(cls, dupfd, offset, *args):
    """In a spawned child: the object whose shared words the parent sent."""
    return cls._rebuild(dupfd.detach(), offset, *args)


def _owner_name():
    name = process.current_process().name
    thread = threading.current_thread().name
    if thread != 'MainThread':
        name += '|' + thread
    return name


# ---------------------------------------------------------------------------
# Semaphores and locks

class SemLock(_core.SemLock):
    """Base of Lock, RLock, Semaphore and BoundedSemaphore."""

    def __new__(cls, kind, value, maxvalue, *, ctx):
        if getattr(ctx, '_name', 'fork') != 'fork':
            # Where the stdlib names the semaphore and registers it.
            resource_tracker._resource_tracker._relaunch_if_died()
        return super().__new__(cls, kind, value, maxvalue)

    @property
    def _semlock(self):
        # The stdlib keeps its C object here; cmp's lock is that object.
        return self

    def __reduce__(self):
        _assert_spawning(self)
        fd, offset = self._shm_handle()
        return _rebuild, (type(self), reduction.DupFd(fd), offset, self.kind, self.maxvalue)

    if _versions.LOCK_LOCKED:
        def locked(self):
            """Whether it is held: no acquire() would succeed without waiting."""
            return self._is_zero()


class Semaphore(SemLock):

    def __new__(cls, value=1, *, ctx):
        return super().__new__(cls, SEMAPHORE, value, SEM_VALUE_MAX, ctx=ctx)

    def get_value(self):
        return self._get_value()

    def __repr__(self):
        try:
            value = self._get_value()
        except Exception:
            value = 'unknown'
        return '<%s(value=%s)>' % (type(self).__name__, value)


class BoundedSemaphore(Semaphore):

    def __new__(cls, value=1, *, ctx):
        return SemLock.__new__(cls, SEMAPHORE, value, value, ctx=ctx)

    def __repr__(self):
        try:
            value = self._get_value()
        except Exception:
            value = 'unknown'
        return '<%s(value=%s, maxvalue=%s)>' % (type(self).__name__, value, self.maxvalue)


class Lock(SemLock):
    """A binary semaphore: any process or thread may release it."""

    def __new__(cls, *, ctx):
        return super().__new__(cls, SEMAPHORE, 1, 1, ctx=ctx)

    def __repr__(self):
        try:
            if self._is_mine():
                owner = _owner_name()
            elif self._get_value() == 1:
                owner = 'None'
            elif self._count() > 0:
                owner = 'SomeOtherThread'
            else:
                owner = 'SomeOtherProcess'
        except Exception:
            owner = 'unknown'
        return '<%s(owner=%s)>' % (type(self).__name__, owner)


class RLock(SemLock):
    """A lock its owning thread may acquire again; only the owner releases it."""

    def __new__(cls, *, ctx):
        return super().__new__(cls, RECURSIVE_MUTEX, 1, 1, ctx=ctx)

    def __repr__(self):
        try:
            if self._is_mine():
                owner, count = _owner_name(), self._count()
            elif self._get_value() == 1:
                owner, count = 'None', 0
            elif self._count() > 0:
                owner, count = 'SomeOtherThread', 'nonzero'
            else:
                owner, count = 'SomeOtherProcess', 'nonzero'
        except Exception:
            owner, count = 'unknown', 'unknown'
        return '<%s(%s, %s)>' % (type(self).__name__, owner, count)


# ---------------------------------------------------------------------------
# Condition

def _rebuild_condition(cls, lock, dupfd, offset):
    self = cls.__new__(cls)
    self.__setstate__((lock, _core.CondVar._rebuild(dupfd.detach(), offset)))
    return self


class Condition:
    """A condition variable over a cmp lock (an RLock by default).

    notify(n) wakes exactly n waiters in the order they began waiting, and
    returns without waiting for them to run (the stdlib's waits until they
    have woken)."""

    def __init__(self, lock=None, *, ctx):
        self.__setstate__((lock or ctx.RLock(), _core.CondVar()))

    def __setstate__(self, state):
        self._lock, self._cv = state
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __reduce__(self):
        _assert_spawning(self)
        fd, offset = self._cv._shm_handle()
        return _rebuild_condition, (type(self), self._lock, reduction.DupFd(fd), offset)

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __repr__(self):
        try:
            waiters = self._cv._waiting()
        except Exception:
            waiters = 'unknown'
        return '<%s(%s, %s)>' % (type(self).__name__, self._lock, waiters)

    def wait(self, timeout=None):
        """Release the lock, wait for a notify or the timeout, reacquire.
        False if the timeout passed."""
        return self._cv.wait(self._lock, timeout)

    def notify(self, n=1):
        self._cv.notify(self._lock, n)

    def notify_all(self):
        self._cv.notify(self._lock, sys.maxsize)

    def wait_for(self, predicate, timeout=None):
        """Wait until predicate() is true or the timeout passes; returns the
        last value of predicate()."""
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            if deadline is None:
                self.wait()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.wait(left)
            result = predicate()
        return result


# ---------------------------------------------------------------------------
# Event

class Event(_core.Event):

    def __new__(cls, *, ctx):
        return super().__new__(cls)

    def __repr__(self):
        return '<%s at %#x %s>' % (type(self).__qualname__, id(self),
                                   'set' if self.is_set() else 'unset')

    def __reduce__(self):
        # The stdlib's Event pickles its Condition first, hence the name.
        _assert_spawning(self, 'Condition')
        fd, offset = self._shm_handle()
        return _rebuild, (type(self), reduction.DupFd(fd), offset)


# ---------------------------------------------------------------------------
# Barrier

class Barrier(threading.Barrier):
    """threading.Barrier with its Condition and its state (phase, count) in
    shared memory."""

    def __init__(self, parties, action=None, timeout=None, *, ctx):
        self.__setstate__((parties, action, timeout, ctx.Condition(), _core.SharedBlock(8)))
        self._state = 0
        self._count = 0

    def __setstate__(self, state):
        self._parties, self._action, self._timeout, self._cond, self._block = state
        self._array = memoryview(self._block).cast('i')

    def __getstate__(self):
        _assert_spawning(self._cond)
        fd, offset, size = self._block._shm_handle()
        return (self._parties, self._action, self._timeout, self._cond,
                _SharedBlockHandle(reduction.DupFd(fd), offset, size))

    @property
    def _state(self):
        return self._array[0]

    @_state.setter
    def _state(self, value):
        self._array[0] = value

    @property
    def _count(self):
        return self._array[1]

    @_count.setter
    def _count(self, value):
        self._array[1] = value


def _rebuild_block(dupfd, offset, size):
    return _core.SharedBlock._rebuild(dupfd.detach(), offset, size)


class _SharedBlockHandle:
    """A SharedBlock in transit to a spawned child: unpickles as the block."""
    __slots__ = ('dupfd', 'offset', 'size')

    def __init__(self, dupfd, offset, size):
        self.dupfd, self.offset, self.size = dupfd, offset, size

    def __reduce__(self):
        return _rebuild_block, (self.dupfd, self.offset, self.size)
