"""Logging, finalizers, after-fork hooks and exit handling (mirrors multiprocessing.util)."""
import atexit
import itertools
import os
import sys
import threading
import weakref

from . import _versions, process

__all__ = [
    'sub_debug', 'debug', 'info', 'sub_warning', 'get_logger', 'log_to_stderr',
    'get_temp_dir', 'register_after_fork', 'is_exiting', 'Finalize',
    'ForkAwareThreadLock', 'ForkAwareLocal', 'close_all_fds_except', 'SUBDEBUG',
    'SUBWARNING',
]
if _versions.UTIL_WARN_NAME == 'warn':
    __all__.insert(__all__.index('get_logger'), 'warn')

# ---------------------------------------------------------------------------
# Logging

NOTSET = 0
SUBDEBUG = 5
DEBUG = 10
INFO = 20
SUBWARNING = 25
if _versions.UTIL_WARNING:
    WARNING = 30

LOGGER_NAME = 'multiprocessing'     # the stdlib's name, so existing logging config applies
DEFAULT_LOGGING_FORMAT = '[%(levelname)s/%(processName)s] %(message)s'

_logger = None
_logger_lock = threading.Lock()
_log_to_stderr = False


# From 3.13 a record names the caller of these helpers (stacklevel=2).
_STACKLEVEL = _versions.LOG_STACKLEVEL


def sub_debug(msg, *args):
    if _logger:
        _logger.log(SUBDEBUG, msg, *args, stacklevel=_STACKLEVEL)


def debug(msg, *args):
    if _logger:
        _logger.log(DEBUG, msg, *args, stacklevel=_STACKLEVEL)


def info(msg, *args):
    if _logger:
        _logger.log(INFO, msg, *args, stacklevel=_STACKLEVEL)


def sub_warning(msg, *args):
    if _logger:
        _logger.log(SUBWARNING, msg, *args, stacklevel=_STACKLEVEL)


if _versions.UTIL_WARNING:
    def _warn(msg, *args):
        if _logger:
            _logger.log(WARNING, msg, *args, stacklevel=_STACKLEVEL)

    if _versions.UTIL_WARN_NAME == 'warn':      # public from 3.14
        warn = _warn
        warn.__name__ = warn.__qualname__ = 'warn'
        del _warn


def _set_process_name(record):
    # logging reads processName from sys.modules['multiprocessing'], which is
    # cmp only under the runner; name the process here for cmp's own records.
    record.processName = process.current_process().name
    return True


def get_logger():
    """Return the logger used by cmp, creating it on first use."""
    global _logger
    import logging
    with _logger_lock:
        if not _logger:
            _logger = logging.getLogger(LOGGER_NAME)
            _logger.propagate = 0
            _logger.addFilter(_set_process_name)
            if not getattr(logging, '_cmp_levels_added', False):
                logging.addLevelName(SUBDEBUG, 'SUBDEBUG')
                logging.addLevelName(SUBWARNING, 'SUBWARNING')
                logging._cmp_levels_added = True
    return _logger


def log_to_stderr(level=None):
    """Turn on logging to stderr and return the logger."""
    global _log_to_stderr
    import logging
    logger = get_logger()
    formatter = logging.Formatter(DEFAULT_LOGGING_FORMAT)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    if level:
        logger.setLevel(level)
    _log_to_stderr = True
    return _logger


# ---------------------------------------------------------------------------
# After-fork hooks

_afterfork_registry = weakref.WeakValueDictionary()
_afterfork_counter = itertools.count()


def _run_after_forkers():
    items = list(_afterfork_registry.items())
    items.sort()
    for (index, ident, func), obj in items:
        try:
            func(obj)
        except Exception as e:
            info('after forker raised exception %s', e)


def register_after_fork(obj, func):
    """Call func(obj) in a child process created by fork, spawn or forkserver."""
    _afterfork_registry[(next(_afterfork_counter), id(obj), func)] = obj


# ---------------------------------------------------------------------------
# Finalizers

# Every pending finalizer of this process, by key (exitpriority, sequence).
_finalizer_registry = {}
_finalizer_counter = itertools.count()


class Finalize:
    """Call callback(*args, **kwargs) once: when `obj` is garbage collected,
    when the Finalize object is called, or at exit.

    `exitpriority` None: only at collection or call. An int: also at exit,
    highest priority first and, for equal priorities, newest first. Without
    an object an exitpriority is required. A finalizer only ever runs in the
    process that created it (a forked child inherits it inert).
    """

    def __init__(self, obj, callback, args=(), kwargs=None, exitpriority=None):
        if exitpriority is not None and not isinstance(exitpriority, int):
            raise TypeError(
                "Exitpriority ({0!r}) must be None or int, not {1!s}".format(
                    exitpriority, type(exitpriority)))
        if obj is None and exitpriority is None:
            raise ValueError("Without object, exitpriority cannot be None")
        self._weakref = weakref.ref(obj, self) if obj is not None else None
        self._call = (callback, args, kwargs or {})
        self._key = (exitpriority, next(_finalizer_counter))
        self._pid = os.getpid()
        _finalizer_registry[self._key] = self

    def _forget(self):
        """Take this finalizer out of the registry: True if it was still there."""
        if _finalizer_registry is None or _finalizer_registry.pop(self._key, None) is None:
            return False
        return True

    def __call__(self, wr=None):
        """Run the callback now (once); its result, or None."""
        if not self._forget():
            sub_debug('finalizer no longer registered')
            return None
        callback, args, kwargs = self._call
        self._call = self._weakref = None
        if self._pid != os.getpid():
            sub_debug('finalizer ignored because different process')
            return None
        sub_debug('finalizer calling %s with args %s and kwargs %s', callback, args, kwargs)
        return callback(*args, **kwargs)

    def cancel(self):
        """Drop the finalizer without running it."""
        if self._forget():
            self._call = self._weakref = None

    def still_active(self):
        """Whether the callback has neither run nor been cancelled."""
        return _finalizer_registry is not None and self._key in _finalizer_registry

    def __repr__(self):
        obj = self._weakref() if self._weakref is not None else None
        if obj is None or self._call is None:
            return '<%s object, dead>' % type(self).__name__
        callback, args, kwargs = self._call
        parts = ['callback=%s' % getattr(callback, '__name__', callback)]
        if args:
            parts.append('args=%s' % (args,))
        if kwargs:
            parts.append('kwargs=%s' % (kwargs,))
        if self._key[0] is not None:
            parts.append('exitpriority=%s' % self._key[0])
        return '<%s object, %s>' % (type(self).__name__, ', '.join(parts))


def _run_finalizers(minpriority=None):
    """Run the finalizers registered for exit: those with a priority of at
    least `minpriority`, or all with a priority when it is None (and then
    forget the rest). Highest priority first, newest first among equals."""
    if _finalizer_registry is None:
        return
    due = sorted((key for key in list(_finalizer_registry)
                  if key[0] is not None and (minpriority is None or key[0] >= minpriority)),
                 reverse=True)
    for key in due:
        finalizer = _finalizer_registry.get(key)
        if finalizer is None:
            continue
        sub_debug('calling %s', finalizer)
        try:
            finalizer()
        except Exception:
            import traceback
            traceback.print_exc()
    if minpriority is None:
        _finalizer_registry.clear()


# ---------------------------------------------------------------------------
# Exit

_exiting = False


def is_exiting():
    """True once the process has begun to shut down."""
    return _exiting or _exiting is None


def _exit_function():
    """Run at interpreter exit (and at the end of a child's bootstrap):
    finalizers, then terminate daemonic children and join the others."""
    global _exiting
    from . import process
    if _exiting:
        return
    _exiting = True
    info('process shutting down')
    debug('running all "atexit" finalizers with priority >= 0')
    _run_finalizers(0)
    if process.current_process() is not None:
        for p in process.active_children():
            if p.daemon:
                info('calling terminate() for daemon %s', p.name)
                p._popen.terminate()
        for p in process.active_children():
            info('calling join() for process %s', p.name)
            p.join()
    debug('running the remaining "atexit" finalizers')
    _run_finalizers()


atexit.register(_exit_function)


def _forked_child_atexit():
    """In a child fork()ed to run a Process: forget the parent's atexit
    handlers; only what the child registers runs when it ends."""
    if _versions.FORK_CHILD_RUNS_ATEXIT:
        atexit._clear()
        atexit.register(_exit_function)


def _forked_child_exit(code, end=os._exit):
    """End such a child with exit status code, after its atexit handlers
    where the stdlib runs them; end(code) is what ends it."""
    try:
        if _versions.FORK_CHILD_RUNS_ATEXIT:
            atexit._run_exitfuncs()
    finally:
        end(code)


def _flush_std_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):
            pass


_devnull_stdin = None     # what _close_stdin() made sys.stdin


def _close_stdin():
    """A child's stdin reads from /dev/null, as in the stdlib. One that
    already does (a child of the fork server, or of another child) keeps it."""
    global _devnull_stdin
    if sys.stdin is None or (sys.stdin is _devnull_stdin and not sys.stdin.closed):
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            sys.stdin = _devnull_stdin = open(fd, encoding="utf-8", closefd=False)
        except BaseException:
            os.close(fd)
            raise
    except (OSError, ValueError):
        pass


def close_fds(*fds):
    for fd in fds:
        os.close(fd)


try:
    MAXFD = os.sysconf('SC_OPEN_MAX')
except (OSError, ValueError):
    MAXFD = 256


def _args_from_interpreter_flags():
    """The command-line flags that reproduce this interpreter's settings
    (loky calls util's; importing subprocess costs a spawned child ~8 ms, so
    only when asked)."""
    import subprocess
    return subprocess._args_from_interpreter_flags()


def spawnv_passfds(path, args, passfds):
    """Start the program path with argv args, keeping open only the
    descriptors passfds (same numbers); its pid."""
    from . import _core
    return _core.spawn(path, list(args), [b'%s=%s' % kv for kv in os.environb.items()],
                       sorted(map(int, passfds)))


# ---------------------------------------------------------------------------
# Temporary directory and socket addresses

def get_temp_dir():
    """This program's temporary directory (made on first use, shared with
    its children, removed at exit by the process that made it)."""
    config = process.current_process()._config
    tempdir = config.get('tempdir')
    if tempdir is None:
        import shutil
        import tempfile
        tempdir = tempfile.mkdtemp(prefix='pymp-')
        info('created temp directory %s', tempdir)
        Finalize(None, _remove_temp_dir, args=(shutil.rmtree, tempdir), exitpriority=-100)
        config['tempdir'] = tempdir
    return tempdir


def _remove_temp_dir(rmtree, tempdir):
    rmtree(tempdir, ignore_errors=True)
    # Once removed (finalizers can run before exit), make a new one if asked.
    current = process.current_process()
    if current is not None:
        current._config['tempdir'] = None


def _platform_supports_abstract_sockets():
    return True     # Linux, the only platform cmp runs on


abstract_sockets_supported = _platform_supports_abstract_sockets()


def is_abstract_socket_namespace(address):
    """Whether a Unix socket address is in Linux's abstract namespace."""
    if not address:
        return False
    if isinstance(address, bytes):
        return address[0] == 0
    if isinstance(address, str):
        return address[0] == '\0'
    raise TypeError(f'address type of {address!r} unrecognized')


def _cleanup_tests():
    """Release what multiprocessing tests leave behind (CPython's test
    suite calls this after its multiprocessing tests)."""
    from test import support
    from . import forkserver, resource_tracker
    process._cleanup()
    stop = getattr(forkserver._forkserver, '_stop', None)
    if stop is not None:
        stop()
    resource_tracker._resource_tracker._stop()
    _run_finalizers()
    support.gc_collect()
    support.reap_children()


def close_all_fds_except(fds):
    fds = sorted(set(fds) | {-1}) + [os.sysconf('SC_OPEN_MAX')]
    for i in range(len(fds) - 1):
        os.closerange(fds[i] + 1, fds[i + 1])


# ---------------------------------------------------------------------------
# Fork-aware helpers

class ForkAwareThreadLock:
    def __init__(self):
        self._lock = threading.Lock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release
        register_after_fork(self, ForkAwareThreadLock._at_fork_reinit)

    def _at_fork_reinit(self):
        self._lock._at_fork_reinit()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)


class ForkAwareLocal(threading.local):
    def __init__(self):
        register_after_fork(self, lambda obj: obj.__dict__.clear())

    def __reduce__(self):
        return type(self), ()
