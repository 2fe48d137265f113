"""The resource tracker (mirrors multiprocessing.resource_tracker).

cmp's tracker is a small C process (src/core/pshm.c), forked on first use,
that outlives the process that started it and the children forked after, and
then unlinks what is still registered, with the stdlib's warning
("resource_tracker: There appear to be N leaked shared_memory objects to
clean up at shutdown"). Registering writes a slot of a table it shares: no
message, no syscall. This module is the stdlib's API over it:

- register(name, rtype) / unregister(name, rtype) for 'shared_memory' (a
  block /dev/shm/NAME) and 'semaphore' (a named POSIX semaphore, the file
  /dev/shm/sem.NAME). The tracker remembers the file's inode, so it never
  unlinks a resource someone else recreated under the same name; a name
  with no such file has nothing to clean up and registers nothing.
  'noop' (and 'dummy' where the stdlib has it) are accepted and track
  nothing; another rtype raises ValueError at once (the stdlib's tracker
  process reports it later on its stderr).
- ensure_running() starts the tracker; getfd() is its pipe (an end held by
  every process it watches). A child started afresh (spawn, forkserver) is
  handed the pipe and the table with its preparation data and uses its
  parent's tracker, as the stdlib's children do: what it leaves registered
  is cleaned up when the whole program has ended, not when it exits.
- main(fd) is the stdlib's tracker loop, for code that starts one itself
  (e.g. loky): it reads the stdlib's REGISTER/UNREGISTER lines from fd and
  cleans up when every writer has closed it.
"""
import errno
import os
import signal
import sys
import threading
import warnings

from . import _core, _versions, spawn, util  # noqa: F401  (spawn: a name of the stdlib's module)

__all__ = ['ensure_running', 'register', 'unregister']

_HAVE_SIGMASK = hasattr(signal, 'pthread_sigmask')
_IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_SHM_DIR = '/dev/shm'
_KIND = {'shared_memory': 0, 'semaphore': 1}     # cmp_tracker kinds (pshm.h)


def _tracked_path(name, rtype):
    """The file's name under /dev/shm, with its leading '/', that cleaning
    up the resource unlinks (glibc puts semaphore NAME at sem.NAME)."""
    bare = name[1:] if name.startswith('/') else name
    return '/' + bare if rtype == 'shared_memory' else '/sem.' + bare


def _shm_unlink(name):
    _core.shm_unlink(name if name.startswith('/') else '/' + name)


def _sem_unlink(name):
    os.unlink(_SHM_DIR + _tracked_path(name, 'semaphore'))


if _versions.TRACKER_313:
    def cleanup_noop(name):
        raise RuntimeError('noop should never be registered or cleaned up')

    _CLEANUP_FUNCS = {'noop': cleanup_noop, 'dummy': lambda name: None}
    _fork_intent = threading.local()
else:
    _CLEANUP_FUNCS = {'noop': lambda: None}

_CLEANUP_FUNCS.update(semaphore=_sem_unlink, shared_memory=_shm_unlink)


class ReentrantCallError(RuntimeError):
    """The stdlib's tracker raises it when a signal handler re-enters it;
    cmp's registering is a store into shared memory and cannot be re-entered."""


class ResourceTracker:
    """The handle on this process's tracker. _fd and _pid are the tracker's
    pipe and pid once it runs (None before).

    From 3.13, as the stdlib's: _exitcode is what the tracker exits with once
    _stop() ends it (None before): 1 if something registered through this
    handle was never unregistered (the tracker cleans it up), else 0. cmp's
    tracker is shared by the whole program and outlives _stop(), so the code
    is worked out from this handle's registrations. _use_simple_format picks
    the stdlib's message format, which decides which names are too long.
    """

    def __init__(self):
        self._lock = threading.RLock()
        self._fd = None
        self._pid = None
        self._registered = set()       # (name, rtype) registered through this handle
        if _versions.TRACKER_313:
            self._exitcode = None
            self._use_simple_format = _versions.TRACKER_SIMPLE_FORMAT
            self._waitpid_timed_out = False

    def getfd(self):
        self.ensure_running()
        return self._fd

    def ensure_running(self):
        """Start the tracker if this process has none, or again if the one
        this process started was killed (what it had registered is kept)."""
        with self._lock:
            self._fd, self._pid, relaunched = _core.tracker_fd()
            if _versions.TRACKER_313:
                self._exitcode = None
        if relaunched:
            warnings.warn('resource_tracker: process died unexpectedly, '  # noqa: B028  (as the stdlib)
                          'relaunching.  Some resources might leak.')

    def _check_alive(self):
        """Whether the tracker process is still running."""
        if self._pid is None:
            return False
        try:
            os.kill(self._pid, 0)
        except OSError:
            return False
        return True

    def _relaunch_if_died(self):
        """If this process has a tracker (started here or attached) and the
        one it started was killed, start another, with the stdlib's warning.
        The stdlib's register() does this each time; a lock of a spawn or
        forkserver context (named and registered in the stdlib) needs no
        tracker in cmp, so it starts none, only relaunches."""
        if _core.tracker_table_fd() >= 0:
            self.ensure_running()

    def _stop(self, use_blocking_lock=True, wait_timeout=None):
        """Forget the tracker: cmp's is watched by its pipe, which every
        process of the program holds, so it ends with the last of them."""
        with self._lock:
            if self._fd is not None and _versions.TRACKER_313:
                self._exitcode = 1 if self._registered else 0
            self._registered.clear()
            self._fd = None
            self._pid = None

    def register(self, name, rtype):
        """Register name (of rtype) to be cleaned up at shutdown."""
        kind = self._kind(name, rtype)
        self._check_length(name, rtype)
        self.ensure_running()
        self._registered.add((name, rtype))
        if kind is None:
            return
        path = _tracked_path(name, rtype)
        try:
            fd = os.open(_SHM_DIR + path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENAMETOOLONG):
                return      # nothing there (or possibly there) to clean up
            raise
        try:
            _core.tracker_add(path, fd, kind)
        finally:
            os.close(fd)

    def unregister(self, name, rtype):
        """Unregister name (of rtype): it will not be cleaned up."""
        kind = self._kind(name, rtype)
        self._registered.discard((name, rtype))
        if kind is not None:
            _core.tracker_forget(_tracked_path(name, rtype), kind)

    def _check_length(self, name, rtype):
        """The stdlib's limits (its message must be one atomic write to its
        pipe), kept so that a name valid here is valid there."""
        simple = getattr(self, '_use_simple_format', True)      # 3.11: always
        if simple and not (_versions.TRACKER_313 and '\n' in name):
            if len('REGISTER:%s:%s\n' % (name, rtype)) > 512:
                raise ValueError('msg too long')
        elif len(name.encode('utf-8', 'surrogateescape')) > 255:
            raise ValueError('shared memory name too long (max 255 bytes)')

    @staticmethod
    def _kind(name, rtype):
        if not isinstance(name, str) or not isinstance(rtype, str):
            raise TypeError('name and rtype must be str')
        if rtype not in _CLEANUP_FUNCS:
            raise ValueError(f'Cannot register {name} for automatic cleanup: '
                             f'unknown resource type {rtype}')
        return _KIND.get(rtype)


_resource_tracker = ResourceTracker()
ensure_running = _resource_tracker.ensure_running
register = _resource_tracker.register
unregister = _resource_tracker.unregister
getfd = _resource_tracker.getfd


def _current():
    """This process's tracker, started now if need be (as the stdlib's spawn
    does): (its table's descriptor, its pipe's, its pid)."""
    pipe = _resource_tracker.getfd()
    return _core.tracker_table_fd(), pipe, _resource_tracker._pid


def _for_child():
    """The preparation data that makes a child being started afresh share
    this process's tracker: its table and pipe, handed over with the child,
    and its pid."""
    from .reduction import DupFd
    table, pipe, pid = _current()
    return DupFd(table), DupFd(pipe), pid


def _attach(table, pipe, pid):
    """In that child (spawn.prepare): use the parent's tracker."""
    _attach_fds(table.detach(), pipe.detach(), pid)


def _attach_fds(table_fd, pipe_fd, pid):
    """Use the tracker whose table and pipe these descriptors are (taken over)."""
    _core.tracker_attach(table_fd, pipe_fd, pid)
    _resource_tracker.ensure_running()


# ---------------------------------------------------------------------------
# main(fd): the stdlib's tracker loop, for a tracker started by other code.

def _decode_message(line):
    """(cmd, rtype, name) of one line: 'CMD:NAME:RTYPE' or, from 3.13 on,
    the JSON form {"cmd", "rtype", "base64_name"}."""
    if line.startswith(b'{'):
        import base64
        import json
        try:
            obj = json.loads(line.decode('ascii'))
            cmd, rtype, b64 = obj['cmd'], obj['rtype'], obj.get('base64_name', '')
        except Exception as e:
            raise ValueError('malformed resource_tracker message: %r' % (line,)) from e
        if not all(isinstance(x, str) for x in (cmd, rtype, b64)):
            raise ValueError('malformed resource_tracker fields: %r' % (obj,))
        try:
            name = base64.urlsafe_b64decode(b64).decode('utf-8', 'surrogateescape')
        except ValueError as e:
            raise ValueError('malformed resource_tracker base64_name: %r' % (b64,)) from e
        return cmd, rtype, name
    cmd, rest = line.strip().decode('ascii').split(':', 1)
    name, rtype = rest.rsplit(':', 1)
    return cmd, rtype, name


def _apply(cache, line):
    cmd, rtype, name = _decode_message(line)
    ResourceTracker._kind(name, rtype)      # an unknown rtype: ValueError
    if cmd == 'REGISTER':
        cache[rtype].add(name)
    elif cmd == 'UNREGISTER':
        cache[rtype].remove(name)
    elif cmd != 'PROBE':
        raise RuntimeError('unrecognized command %r' % cmd)


def _clean_up(cache):
    """Unlink what is left, warning as the stdlib does; the exit code:
    0 if nothing was left, 1 if something was, 2 if cleaning it up failed."""
    exit_code = 0
    for rtype, names in cache.items():
        if not names:
            continue
        exit_code = max(exit_code, 1)
        msg = ('resource_tracker: There appear to be %d leaked %s objects to '
               'clean up at shutdown' % (len(names), rtype))
        if _versions.TRACKER_313:
            msg += ': %s' % (names,)
        if rtype != 'dummy':
            warnings.warn(msg)  # noqa: B028  (as the stdlib: the warning names no caller)
        for name in names:
            try:
                _CLEANUP_FUNCS[rtype](name)
            except Exception as e:
                exit_code = 2
                warnings.warn('resource_tracker: %r: %s' % (name, e))  # noqa: B028
    return exit_code


def main(fd):
    """Run a resource tracker reading the stdlib's protocol from fd."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _HAVE_SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _IGNORED_SIGNALS)
    for f in (sys.stdin, sys.stdout):
        try:
            f.close()
        except Exception:
            pass
    cache = {rtype: set() for rtype in _CLEANUP_FUNCS}
    exit_code = 0
    try:
        with open(fd, 'rb') as f:
            for line in f:
                try:
                    _apply(cache, line)
                except Exception:
                    exit_code = 3
                    try:
                        sys.excepthook(*sys.exc_info())
                    except BaseException:
                        pass
    finally:
        exit_code = _clean_up(cache) or exit_code
        if _versions.TRACKER_313:
            sys.exit(exit_code)
