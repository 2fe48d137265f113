"""The fork server (mirrors multiprocessing.forkserver).

A server process is spawned once; it imports the preload modules (by default
the main module), freezes what it has so its children's garbage collector
leaves those pages shared, and then runs a loop in C (cmp._core) that forks
a child for every request. A request is one connection to the server's
abstract unix socket: one sendmsg() carries a header with the server's key,
the descriptors the child gets (SCM_RIGHTS: a pidfd of the requesting
process, then those the Process object refers to) and the start of the
payload (preparation data and Process object); the child reads the rest of
the payload from the connection itself. The server answers with the child's
pid and, once the child has ended, its exit code (8-byte signed
little-endian each). See src/core/proc.h.

Authentication (what 3.14's stdlib does with an HMAC challenge, here without
a round trip): any process in the network namespace can connect to an
abstract socket, so the server forks only for a peer of its own uid whose
request carries the 32-byte key the server was started with; the requester
checks that the socket it reached was listened on by the process that
started the server, so a stranger that took over the address of a dead
server gets no key.
"""
import _signal
import functools
import gc
import os
import struct
import sys
import threading
import time

from . import _core, _versions, connection, context, process, reduction, resource_tracker, spawn, util  # noqa: F401
from .context import AuthenticationError

__all__ = ['ensure_running', 'get_inherited_fds', 'connect_to_new_process',
           'set_forkserver_preload']

MAXFDS_TO_SEND = 256
_INT = struct.Struct('<q')
SIGNED_STRUCT = struct.Struct('q')    # the stdlib's name; the same 8 bytes on Linux
_KEY_LEN = 32


class ForkServer:

    def __init__(self):
        self._address = None        # bytes: an abstract unix socket address
        self._alive_w = None
        self._server_pid = None
        self._listener_pid = None   # the process that listens on _address
        self._forkserver_authkey = None    # the stdlib's name for the server's key
        self._base_prep = None      # the preparation data the server applied
        self._tracker_pid = None    # the resource tracker the server uses
        self._lock = threading.Lock()
        self._preload_modules = ['__main__']
        self._preload_on_error = 'ignore'

    def set_forkserver_preload(self, modules_names, *, on_error='ignore'):
        if not all(type(mod) is str for mod in modules_names):
            raise TypeError('module_names must be a list of strings')
        if on_error not in ('ignore', 'warn', 'fail'):
            raise ValueError(f"on_error must be 'ignore', 'warn', or 'fail', not {on_error!r}")
        self._preload_modules = modules_names
        self._preload_on_error = on_error

    def get_inherited_fds(self):
        return context._inherited_fds

    def connect_to_new_process(self, fds, payload=b''):
        """Ask the server for a child that inherits fds and reads payload;
        returns (the descriptor its exit code arrives on, its pid)."""
        if len(fds) + 4 >= MAXFDS_TO_SEND:
            raise ValueError('too many fds')
        self.ensure_running()
        try:
            return _core.forkserver_request(self._address, self._listener_pid,
                                            self._forkserver_authkey, payload, fds)
        except ConnectionResetError:
            # (what _core says when the server closed the connection unanswered)
            if self._server_pid == _SERVER_IN_PARENT or not _stays_alive(self._server_pid):
                if not _versions.FORKSERVER_HANDSHAKE:
                    raise EOFError('unexpected EOF') from None
                raise
            # The server is there and closed the connection unanswered: it
            # refused our key (the stdlib's handshake says the same).
            raise AuthenticationError('digest sent was rejected') from None

    @property
    def _forkserver_pid(self):
        """The stdlib's name: the server's pid, if this process started it."""
        pid = self._server_pid
        return None if pid == _SERVER_IN_PARENT else pid

    def _stop(self):
        """Stop the server this process started (it exits when alive_w closes)."""
        with self._lock:
            if self._server_pid is None:
                return
            if self._server_pid != _SERVER_IN_PARENT:
                os.close(self._alive_w)
                os.waitpid(self._server_pid, 0)
            self._address = self._alive_w = self._server_pid = None
            self._listener_pid = self._forkserver_authkey = None
            self._base_prep = self._tracker_pid = None

    def ensure_running(self):
        """Start the server if this process has none running."""
        with self._lock:
            if self._server_pid is not None:
                if self._server_pid == _SERVER_IN_PARENT or _alive(self._server_pid):
                    return
                os.close(self._alive_w)
                self._address = self._alive_w = self._server_pid = None

            import socket
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = b'\0cmp-forkserver-%d-%s' % (os.getpid(), os.urandom(8).hex().encode())
            listener.bind(address)
            listener.listen()
            key = os.urandom(_KEY_LEN)
            alive_r, alive_w = os.pipe()
            data_r, data_w = os.pipe()
            try:
                prep = spawn.get_preparation_data('ForkServer')
                prep.pop('name')
                base = {k: v for k, v in prep.items() if k not in _NOT_APPLIED}
                table, pipe, tracker_pid = resource_tracker._current()
                prep['preload'] = list(self._preload_modules)
                prep['key'] = key
                prep['preload_on_error'] = self._preload_on_error
                prep['tracker'] = (table, pipe, tracker_pid)
                payload = bytearray()
                spawn.dump_prefixed(prep, payload)
                prog = 'from cmp.forkserver import main; main()'
                import subprocess
                cmd = [spawn.get_executable(), *subprocess._args_from_interpreter_flags(),
                       '-c', prog, '--cmp-forkserver', str(listener.fileno()),
                       str(alive_r), str(data_r)]
                util._flush_std_streams()
                pid = _core.spawn(spawn.get_executable(), cmd,
                                  [b'%s=%s' % kv for kv in os.environb.items()],
                                  [listener.fileno(), alive_r, data_r, table, pipe])
            except BaseException:
                os.close(alive_w)
                raise
            finally:
                listener.close()
                os.close(alive_r)
                os.close(data_r)
            with open(data_w, 'wb') as f:
                f.write(payload)
            self._address = address
            self._alive_w = alive_w
            self._server_pid = pid
            self._listener_pid = os.getpid()
            self._forkserver_authkey = key
            self._base_prep = base
            self._tracker_pid = tracker_pid
            _watch_forks()


# Preparation data the server does not apply itself: every child is sent
# these (the key of the main module, whose preloading may have failed).
_NOT_APPLIED = ('authkey', 'init_main_from_path', 'init_main_from_name')
# What the server puts back after preloading, for its children to start
# from what it was told (what a preloaded module changed of it is undone).
_RESTORED = ('sys_path', 'sys_argv', 'dir', 'orig_dir', 'start_method')

# A child forked from a process that started a server shares that server;
# it is not the server's parent, so it cannot waitpid() it.
_SERVER_IN_PARENT = -1


def _alive(pid):
    try:
        return _core.reap(pid) is None
    except ChildProcessError:
        return False


def _stays_alive(pid, grace=0.2):
    """Whether the server is still there after a moment: one that dies
    (its preloading failed) may not have exited yet when its connection
    closes; one that refused a key goes on serving."""
    deadline = time.monotonic() + grace
    while _alive(pid):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.01)
    return False


def _after_fork_in_child():
    if _forkserver._server_pid is not None:
        _forkserver._server_pid = _SERVER_IN_PARENT


_watching_forks = False


def _watch_forks():
    """From the first server on (not at import: a program that never starts
    one spares its forked children the call)."""
    global _watching_forks
    if not _watching_forks:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _watching_forks = True


# ---------------------------------------------------------------------------
# The server

def main():
    """Entry point of the server process."""
    listener_fd, alive_r, data_r = map(int, sys.argv[2:5])
    with open(data_r, 'rb') as f:
        sample = f.read()
    prep, _ = spawn._load_prefixed(sample, 0)
    preload = prep.pop('preload')
    key = prep.pop('key')
    on_error = prep.pop('preload_on_error')
    resource_tracker._attach_fds(*prep.pop('tracker'))     # shared by every child
    prep.pop('authkey', None)
    if '__main__' in preload:
        preload = [m for m in preload if m != '__main__']
        main_path = prep.pop('init_main_from_path', None)
    else:
        prep.pop('init_main_from_path', None)
        prep.pop('init_main_from_name', None)
        main_path = None
    process.current_process()._inheriting = True
    try:
        spawn.prepare(prep)
        if main_path is not None:
            _preload_main(main_path, on_error)
    finally:
        del process.current_process()._inheriting
    for modname in preload:
        try:
            __import__(modname)
        except ImportError as e:
            _preload_failed(on_error, 'module %r' % modname, e)
    # A request carries only what differs from what the server was started
    # with (ForkServer._base_prep): make that hold again.
    spawn.prepare({k: prep[k] for k in _RESTORED if k in prep})
    util._flush_std_streams()       # what the preloaded modules printed is the server's
    util._close_stdin()
    # (_signal: signal's enum wrappers would cost each child some 50 us)
    old_sigint = _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    # What the server holds now is shared with every child; frozen, no
    # collection in a child touches (and so copies) its pages.
    gc.collect()
    gc.freeze()
    request = _core.forkserver_serve(listener_fd, alive_r, key)
    if request is None:
        os._exit(0)                 # the main process is gone: so are we
    end = os._exit
    if type(request[0]) is int:     # (a spare: its hand-off socket, bell, warm-up)
        request = _wait_as_spare(*request, sample)
        end = functools.partial(_end_spare_child, os.getpid(), request[2])
    # (A child the server forked for its request keeps the request's
    # connection open too: every child has as many descriptors.)
    payload, fds, _ = request
    code = 1
    try:
        _signal.signal(_signal.SIGINT, old_sigint)
        util._forked_child_atexit()
        code = _run_child(payload, fds)
    except BaseException:
        # Failed before the process ran (its unpickling, its main module):
        # say why, as a child of the stdlib's server does.
        sys.excepthook(*sys.exc_info())
        util._flush_std_streams()
    finally:
        util._forked_child_exit(code, end)


def _wait_as_spare(end, bell, warm, sample):
    """In a spare (a child forked ahead of the next request): do now what
    every child does first, then wait for the request the server hands
    over. A child's first steps copy the pages of the server's memory they
    write to (reference counts, the interpreter's caches): taken here, that
    costs no one a wait. Not when the server says starts come back to back
    (`warm` false): then no CPU is free for it, and the child would repeat
    most of it."""
    util._forked_child_atexit()
    for step in _WARM_UP if warm else ():
        if _core.wait_readable(bell, 0):
            break                   # a request waits: the child does the rest
        try:
            step(sample)
        except Exception:
            pass                    # only slower
    try:
        request = _core.forkserver_take(end, bell)
    except BaseException:
        os._exit(1)                 # (a request it cannot read: its requester hears 1)
    if request is None:
        os._exit(0)                 # the server is gone: no request will come
    return request


def _end_spare_child(pid, conn, code):
    """The end of a child that was a spare: its exit code, sent on the
    request's connection after the pid the server answered (it rang the
    spare's bell after that), so that join() returns without waiting for
    the kernel to free this process's memory and for the server to reap
    it. Every descriptor but the standard three is closed first, so what
    this process held (files, locks, sockets) is released before join()
    returns, as with the stdlib. (A child the server forked for its request
    cannot know that its pid was answered before it ends.)"""
    if os.getpid() == pid and -1 << 31 <= code < 1 << 31:     # (not a child
        _core.forkserver_exit(conn, code)                      # os.fork() made)
    os._exit(code)          # (a code beyond a C int fails here, as in the stdlib)


# What a child does before it runs its target, done by a spare on what it
# already is, in steps (a request that arrives cuts them short). Each step
# leaves things as they were.

def _warm_up_unpickling(sample):
    spawn._load_prefixed(sample, 0)


def _warm_up_preparing(sample):
    spawn.prepare({'sys_path': sys.path, 'sys_argv': sys.argv})
    main = getattr(sys.modules['__main__'], '__file__', None)
    if main is not None:
        spawn._fixup_main_from_path(main)       # imported already: nothing to do
    me = process.current_process()
    me.name, me.authkey = me.name, me.authkey
    method = context._default_context.get_start_method(allow_none=True)
    if method is not None:
        context._force_start_method(method)
    if threading._HAVE_THREAD_NATIVE_ID:
        threading.main_thread()._set_native_id()
    process._ParentProcess(me.name, os.getppid(), None)
    util._flush_std_streams()


def _warm_up_importing(sample):
    """Finding and loading the module of the target: a search that finds
    nothing, and this module's bytecode, unmarshalled but not run (never
    compiled, even where it is stale: that would cost more than it saves)."""
    import importlib.util
    import marshal
    importlib.util.find_spec('_cmp_forkserver_warm_up_finds_nothing')
    cached = getattr(__spec__, 'cached', None)
    if cached:
        try:
            with open(cached, 'rb') as f:
                marshal.loads(memoryview(f.read())[16:])   # after the pyc header
        except (OSError, ValueError, EOFError, TypeError):
            pass


_WARM_UP = (_warm_up_unpickling, _warm_up_preparing, _warm_up_importing)


def _preload_main(main_path, on_error):
    """Import the main module once, for every child. On 3.13 and 3.14 a
    failure stops the server; from 3.15 on_error says what it does. When
    the server goes on without it, each child imports the main module itself
    (and fails there, as the stdlib's children do): so it does, silently,
    before 3.13, whose stdlib server never imports it."""
    try:
        spawn._fixup_main_from_path(main_path)
    except Exception as e:
        if not _versions.FORKSERVER_PRELOADS_MAIN:
            spawn._forget_main(main_path)
            return
        if not _versions.FORKSERVER_PRELOAD_ON_ERROR:
            raise
        spawn._forget_main(main_path)
        _preload_failed(on_error, '__main__ from %r' % main_path, e)


def _preload_failed(on_error, what, exc):
    if not _versions.FORKSERVER_PRELOAD_ON_ERROR or on_error == 'ignore':
        return
    if on_error == 'fail':
        raise exc
    import warnings
    warnings.warn('Failed to preload %s: %s' % (what, exc), ImportWarning, stacklevel=3)


def _run_child(data, fds):
    """In a child of the server: become the requested process."""
    requester_pidfd, *inherited = fds
    context._inherited_fds = inherited

    def before_run(process_obj):
        if process_obj.daemon:
            # Our parent is the server; a daemon dies with the requester.
            _core.die_with_parent(0, os.dup(requester_pidfd))
    return spawn._prepare_and_run(data, requester_pidfd, before_run)


def read_signed(sock):
    """One 8-byte signed integer from sock (a socket or a descriptor);
    EOFError if it closes first."""
    buf = b''
    while len(buf) < _INT.size:
        want = _INT.size - len(buf)
        chunk = os.read(sock, want) if isinstance(sock, int) else sock.recv(want)
        if not chunk:
            raise EOFError('unexpected EOF')
        buf += chunk
    return _INT.unpack(buf)[0]


def write_signed(fd, n):
    """Write n as 8 bytes to fd (a descriptor or a socket)."""
    data = _INT.pack(n)
    while data:
        sent = os.write(fd, data) if isinstance(fd, int) else fd.send(data)
        if sent == 0:
            raise RuntimeError('should not get here')
        data = data[sent:]


_forkserver = ForkServer()
ensure_running = _forkserver.ensure_running
get_inherited_fds = _forkserver.get_inherited_fds
connect_to_new_process = _forkserver.connect_to_new_process
set_forkserver_preload = _forkserver.set_forkserver_preload
