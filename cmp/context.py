"""Start methods and contexts (mirrors multiprocessing.context).

A context bundles a start method with the factories (Process, Lock, Queue,
...). The module-level names of `cmp` come from the default context, whose
start method is fixed by the first `set_start_method()` or first use.
"""
import importlib
import os
import threading

from . import _versions, process
from . import reduction  # noqa: E402,F401  (context.reduction, as in the stdlib)

__all__ = ()


class ProcessError(Exception):
    pass


class BufferTooShort(ProcessError):
    pass


class TimeoutError(ProcessError):
    pass


class AuthenticationError(ProcessError):
    pass


def _require(name):
    """Import cmp.<name>; a part that cmp does not have yet is a clear ImportError."""
    try:
        return importlib.import_module('cmp.' + name)
    except ModuleNotFoundError as e:
        if e.name != 'cmp.' + name:
            raise
        raise ImportError('cmp does not provide multiprocessing.%s yet' % name,
                          name='cmp.' + name) from None


class BaseContext:
    ProcessError = ProcessError
    BufferTooShort = BufferTooShort
    TimeoutError = TimeoutError
    AuthenticationError = AuthenticationError

    current_process = staticmethod(process.current_process)
    parent_process = staticmethod(process.parent_process)
    active_children = staticmethod(process.active_children)

    def cpu_count(self):
        """Number of CPUs in the system."""
        num = os.cpu_count()
        if num is None:
            raise NotImplementedError('cannot determine number of cpus')
        return num

    def Manager(self):
        """A SyncManager, started."""
        m = _require('managers').SyncManager(ctx=self.get_context())
        m.start()
        return m

    def Pipe(self, duplex=True):
        """A pair of Connection objects joined by a pipe."""
        return _require('connection').Pipe(duplex)

    def Lock(self):
        return _require('synchronize').Lock(ctx=self.get_context())

    def RLock(self):
        return _require('synchronize').RLock(ctx=self.get_context())

    def Condition(self, lock=None):
        return _require('synchronize').Condition(lock, ctx=self.get_context())

    def Semaphore(self, value=1):
        return _require('synchronize').Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value=1):
        return _require('synchronize').BoundedSemaphore(value, ctx=self.get_context())

    def Event(self):
        return _require('synchronize').Event(ctx=self.get_context())

    def Barrier(self, parties, action=None, timeout=None):
        return _require('synchronize').Barrier(parties, action, timeout,
                                               ctx=self.get_context())

    def Queue(self, maxsize=0):
        return _require('queues').Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize=0):
        return _require('queues').JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self):
        return _require('queues').SimpleQueue(ctx=self.get_context())

    def Pool(self, processes=None, initializer=None, initargs=(),
             maxtasksperchild=None, *, cluster=None):
        """A process pool; with cluster=ADDRESS (or CMP_CLUSTER), on a Dask
        or Ray cluster (see cmp.cluster)."""
        return _require('pool').Pool(processes, initializer, initargs, maxtasksperchild,
                                     context=self.get_context(), cluster=cluster)

    def RawValue(self, typecode_or_type, *args):
        return _require('sharedctypes').RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type, size_or_initializer):
        return _require('sharedctypes').RawArray(typecode_or_type, size_or_initializer)

    def Value(self, typecode_or_type, *args, lock=True):
        return _require('sharedctypes').Value(typecode_or_type, *args, lock=lock,
                                              ctx=self.get_context())

    def Array(self, typecode_or_type, size_or_initializer, *, lock=True):
        return _require('sharedctypes').Array(typecode_or_type, size_or_initializer,
                                              lock=lock, ctx=self.get_context())

    def freeze_support(self):
        """Nothing to do on Linux (frozen Windows executables only)."""

    def get_logger(self):
        from .util import get_logger
        return get_logger()

    def log_to_stderr(self, level=None):
        from .util import log_to_stderr
        return log_to_stderr(level)

    def allow_connection_pickling(self):
        """Connections are always picklable in cmp; kept for compatibility."""
        _require('connection')

    def set_executable(self, executable):
        """The Python interpreter that spawn and forkserver start."""
        from .spawn import set_executable
        set_executable(executable)

    if _versions.FORKSERVER_PRELOAD_ON_ERROR:
        def set_forkserver_preload(self, module_names, *, on_error='ignore'):
            """Modules the fork server imports once, before forking children;
            on_error says what a failed import does: 'ignore', 'warn' or 'fail'."""
            from .forkserver import set_forkserver_preload
            set_forkserver_preload(module_names, on_error=on_error)
    else:
        def set_forkserver_preload(self, module_list):
            """Modules the fork server imports once, before forking children."""
            from .forkserver import set_forkserver_preload
            set_forkserver_preload(module_list)

    def get_context(self, method=None):
        if method is None:
            return self
        try:
            ctx = _concrete_contexts[method]
        except KeyError:
            raise ValueError('cannot find context for %r' % method) from None
        return ctx

    def get_start_method(self, allow_none=False):
        return self._name

    def set_start_method(self, method, force=False):
        raise ValueError('cannot set start method of concrete context')

    @property
    def reducer(self):
        """The reduction module (pickling helpers)."""
        return _require('reduction')

    @reducer.setter
    def reducer(self, value):
        raise NotImplementedError('cmp does not support replacing its reducer')

    def _check_available(self):
        pass


# ---------------------------------------------------------------------------
# Process classes, one per start method

class Process(process.BaseProcess):
    """multiprocessing.Process: starts with the default context's method."""
    _start_method = None

    @staticmethod
    def _Popen(process_obj):
        return _default_context.get_context().Process._Popen(process_obj)

    @staticmethod
    def _after_fork():
        return _default_context.get_context().Process._after_fork()


class ForkProcess(process.BaseProcess):
    _start_method = 'fork'

    @staticmethod
    def _Popen(process_obj):
        from .popen_fork import Popen
        return Popen(process_obj)


class SpawnProcess(process.BaseProcess):
    _start_method = 'spawn'

    @staticmethod
    def _Popen(process_obj):
        from .popen_spawn_posix import Popen
        return Popen(process_obj)


class ForkServerProcess(process.BaseProcess):
    _start_method = 'forkserver'

    @staticmethod
    def _Popen(process_obj):
        from .popen_forkserver import Popen
        return Popen(process_obj)


class DefaultContext(BaseContext):
    Process = Process

    def __init__(self, context):
        self._default_context = context
        self._actual_context = None

    def get_context(self, method=None):
        if method is None:
            if self._actual_context is None:
                self._actual_context = self._default_context
            return self._actual_context
        return super().get_context(method)

    def set_start_method(self, method, force=False):
        if self._actual_context is not None and not force:
            raise RuntimeError('context has already been set')
        if method is None and force:
            self._actual_context = None
            return
        self._actual_context = self.get_context(method)

    def get_start_method(self, allow_none=False):
        if self._actual_context is None:
            if allow_none:
                return None
            self._actual_context = self._default_context
        return self._actual_context._name

    def get_all_start_methods(self):
        """The start methods, the default first."""
        return list(_versions.ALL_START_METHODS)


class ForkContext(BaseContext):
    _name = 'fork'
    Process = ForkProcess


class SpawnContext(BaseContext):
    _name = 'spawn'
    Process = SpawnProcess


class ForkServerContext(BaseContext):
    _name = 'forkserver'
    Process = ForkServerProcess


_concrete_contexts = {
    'fork': ForkContext(),
    'spawn': SpawnContext(),
    'forkserver': ForkServerContext(),
}
_default_context = DefaultContext(_concrete_contexts[_versions.DEFAULT_START_METHOD])


def _force_start_method(method):
    """In a child: the parent's start method (None: not chosen yet)."""
    _default_context._actual_context = None if method is None else _concrete_contexts[method]


# ---------------------------------------------------------------------------
# Spawning: objects that carry descriptors or shared state pickle only while a
# Process object is being sent to a child started by spawn or forkserver.

_tls = threading.local()


def get_spawning_popen():
    """The Popen of the child being spawned by this thread, or None."""
    return getattr(_tls, 'spawning_popen', None)


def set_spawning_popen(popen):
    _tls.spawning_popen = popen


def assert_spawning(obj):
    if get_spawning_popen() is None:
        raise RuntimeError(
            '%s objects should only be shared between processes'
            ' through inheritance' % type(obj).__name__)


# Descriptors a child started by forkserver received, in the order its
# parent's Popen.duplicate_for_child() handed out their indices.
_inherited_fds = None


def _resolve_inherited_fd(token):
    """The descriptor in this child for a token from duplicate_for_child()."""
    if _inherited_fds is None:
        return token            # spawn: same number as in the parent
    return _inherited_fds[token]
