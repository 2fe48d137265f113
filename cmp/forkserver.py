"""The fork server (mirrors multiprocessing.forkserver).

A server process is spawned once; it imports the preload modules (by default
the main module) and then forks a child for every request. A request is a
connection on the server's abstract unix socket carrying, by SCM_RIGHTS, the
read end of a pipe with the child's preparation data and Process object, a
pidfd of the requesting process, and the descriptors the Process object
refers to. The server answers with the child's pid and, once the child has
ended, its exit code (8-byte signed little-endian each).
"""
import os
import selectors
import signal
import socket
import struct
import sys
import threading

from . import _core, context, process, spawn, util

__all__ = ['ensure_running', 'get_inherited_fds', 'connect_to_new_process',
           'set_forkserver_preload']

MAXFDS_TO_SEND = 256
_INT = struct.Struct('<q')


class ForkServer:

    def __init__(self):
        self._address = None
        self._alive_w = None
        self._server_pid = None
        self._lock = threading.Lock()
        self._preload_modules = ['__main__']

    def set_forkserver_preload(self, modules_names):
        if not all(type(mod) is str for mod in modules_names):
            raise TypeError('module_names must be a list of strings')
        self._preload_modules = modules_names

    def get_inherited_fds(self):
        return context._inherited_fds

    def connect_to_new_process(self, fds):
        """Ask the server for a child that inherits fds; returns the socket
        the pid and then the exit code arrive on."""
        if len(fds) + 4 >= MAXFDS_TO_SEND:
            raise ValueError('too many fds')
        self.ensure_running()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(None)       # not socket.setdefaulttimeout()'s: the pid may take a while
        try:
            sock.connect(self._address)
            socket.send_fds(sock, [b'F'], fds)
        except BaseException:
            sock.close()
            raise
        return sock

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

    def ensure_running(self):
        """Start the server if this process has none running."""
        with self._lock:
            if self._server_pid is not None:
                if self._server_pid == _SERVER_IN_PARENT or _alive(self._server_pid):
                    return
                os.close(self._alive_w)
                self._address = self._alive_w = self._server_pid = None

            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = '\0cmp-forkserver-%d-%s' % (os.getpid(), os.urandom(8).hex())
            listener.bind(address)
            listener.listen()
            alive_r, alive_w = os.pipe()
            data_r, data_w = os.pipe()
            try:
                prep = spawn.get_preparation_data('ForkServer')
                prep.pop('name')
                prep['preload'] = list(self._preload_modules)
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
                                  [listener.fileno(), alive_r, data_r])
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


# A child forked from a process that started a server shares that server;
# it is not the server's parent, so it cannot waitpid() it.
_SERVER_IN_PARENT = -1


def _alive(pid):
    try:
        return _core.reap(pid) is None
    except ChildProcessError:
        return False


def _after_fork_in_child():
    if _forkserver._server_pid is not None:
        _forkserver._server_pid = _SERVER_IN_PARENT


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------
# The server

def main():
    """Entry point of the server process."""
    listener_fd, alive_r, data_r = map(int, sys.argv[2:5])
    with open(data_r, 'rb') as f:
        prep, _ = spawn._load_prefixed(f.read(), 0)
    preload = prep.pop('preload')
    prep.pop('authkey', None)
    if '__main__' in preload:
        preload = [m for m in preload if m != '__main__']
    else:
        prep.pop('init_main_from_path', None)
        prep.pop('init_main_from_name', None)
    process.current_process()._inheriting = True
    try:
        spawn.prepare(prep)
    finally:
        del process.current_process()._inheriting
    for modname in preload:
        try:
            __import__(modname)
        except ImportError:
            pass
    util._close_stdin()
    _serve(socket.socket(fileno=listener_fd), alive_r)


def _serve(listener, alive_r):
    sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    handlers = {
        signal.SIGCHLD: signal.signal(signal.SIGCHLD, lambda *a: None),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
    }
    signal.set_wakeup_fd(sig_w)
    children = {}           # pid -> connection to the requester
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, 'listener')
    sel.register(alive_r, selectors.EVENT_READ, 'alive')
    sel.register(sig_r, selectors.EVENT_READ, 'signal')
    while True:
        for key, _ in sel.select():
            what = key.data
            if what == 'alive':
                os._exit(0)         # the main process is gone: so are we
            if what == 'signal':
                try:
                    while os.read(sig_r, 512):
                        pass
                except BlockingIOError:
                    pass
                _reap(children)
            elif what == 'listener':
                conn, _ = listener.accept()
                try:
                    _, fds, _, _ = socket.recv_fds(conn, 1, MAXFDS_TO_SEND + 1)
                except OSError:
                    conn.close()
                    continue
                if len(fds) < 2:
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                pid = _core.fork(False, -1)
                if pid == 0:
                    code = 1
                    try:
                        signal.set_wakeup_fd(-1)
                        for sig, old in handlers.items():
                            signal.signal(sig, old)
                        sel.close()
                        listener.close()
                        for fd in (alive_r, sig_r, sig_w):
                            os.close(fd)
                        for c in children.values():
                            c.close()
                        conn.close()
                        code = _run_child(fds)
                    finally:
                        os._exit(code)
                for fd in fds:
                    os.close(fd)
                try:
                    conn.sendall(_INT.pack(pid))
                    children[pid] = conn
                except OSError:
                    conn.close()


def _reap(children):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(_INT.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass
            conn.close()


def _run_child(fds):
    """In a child of the server: become the requested process."""
    data_r, requester_pidfd, *inherited = fds
    context._inherited_fds = inherited
    with open(data_r, 'rb') as f:
        data = f.read()
    process.current_process()._inheriting = True
    try:
        prep, offset = spawn._load_prefixed(data, 0)
        spawn.prepare(prep)
        process_obj, _ = spawn._load_prefixed(data, offset)
    finally:
        del process.current_process()._inheriting
    if process_obj.daemon:
        # Our parent is the server; a daemon dies with the requester.
        _core.die_with_parent(0, os.dup(requester_pidfd))
    return process_obj._bootstrap(parent_sentinel=requester_pidfd)


def read_signed(sock):
    """One 8-byte signed integer from sock; EOFError if it closes first."""
    buf = b''
    while len(buf) < _INT.size:
        chunk = sock.recv(_INT.size - len(buf))
        if not chunk:
            raise EOFError('unexpected EOF')
        buf += chunk
    return _INT.unpack(buf)[0]


_forkserver = ForkServer()
ensure_running = _forkserver.ensure_running
get_inherited_fds = _forkserver.get_inherited_fds
connect_to_new_process = _forkserver.connect_to_new_process
set_forkserver_preload = _forkserver.set_forkserver_preload
