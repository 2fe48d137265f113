"""Starting a child as a fresh interpreter (mirrors multiprocessing.popen_spawn_posix).

Most of a spawned child's start is the interpreter's own: starting up,
running site, importing cmp. So after the first spawn start (from the main
thread), cmp starts one *spare*: a fresh interpreter, spawned exactly as a
child would be, that gets that far and then waits on a socket. The next
start hands it the preparation data, the Process object and the descriptors
the child inherits (0, 1 and 2 as they are now, and those the Process
object refers to, under the same numbers), and it goes on exactly as a
child spawned at that moment would: it re-imports the main module as
__mp_main__ and runs. A spare is used only if what it inherited when it was
started is still what a child started now would inherit (interpreter and
flags, environment, working directory, credentials, umask, limits, signal
mask and ignored signals, which of 0-2 are open and terminals:
_core.proc_state); otherwise it is discarded and the child is spawned as
usual. A spare is not a child the program sees (active_children() does not
list it); it is killed and reaped when the program exits, and exits by
itself if the program dies. CMP_SPAWN_SPARE=0 turns spares off.
"""
import atexit
import os
import signal
import threading

from . import _core, popen_fork, spawn, util
from . import reduction  # noqa: F401  (names of the stdlib's module)
from .context import set_spawning_popen  # noqa: F401

__all__ = ['Popen']

_SPARES = os.environ.get('CMP_SPAWN_SPARE', '1') != '0'


class Popen(popen_fork.Popen):
    """A child started by posix_spawn of the interpreter (or a spare one);
    it reads its preparation data and Process object from a pipe (a spare:
    from its socket)."""
    method = 'spawn'

    def __init__(self, process_obj):
        self._fds = []
        super().__init__(process_obj)

    def duplicate_for_child(self, fd):
        self._fds.append(fd)
        return fd

    def _launch(self, process_obj):
        data = spawn.pickle_for_child(self, process_obj)
        main = threading.current_thread() is threading.main_thread()
        state = _start_state() if _SPARES else None
        spare = _spare.take(state)
        if spare is None or not self._hand_to(spare, data, main):
            self._spawn(data, main)
        if state is not None and main:
            _spare.start(state)

    def _spawn(self, data, main):
        child_r, parent_w = os.pipe()
        try:
            cmd = spawn.get_command_line(fd=child_r, ppid=os.getpid(), main=int(main))
            util._flush_std_streams()
            self.pid = _core.spawn(spawn.get_executable(), cmd,
                                   [b'%s=%s' % kv for kv in os.environb.items()],
                                   [child_r, *self._fds])
            self.sentinel = _core.pidfd_open(self.pid)
            self.finalizer = util.Finalize(self, util.close_fds, (self.sentinel,))
        finally:
            os.close(child_r)
        with open(parent_w, 'wb', closefd=True) as f:
            try:
                f.write(data)
            except BrokenPipeError:
                pass    # the child died before reading; its exit code tells why

    def _hand_to(self, spare, data, main):
        """Make spare the child; False if it is gone (nothing was started)."""
        targets = [fd for fd in (0, 1, 2) if _is_open(fd)] + self._fds
        payload = bytearray()
        spawn.dump_prefixed((targets, main), payload)
        payload += data
        util._flush_std_streams()
        try:
            _core.send_request(spare.sock, payload, targets)
        except OSError:
            spare.discard()
            return False
        os.close(spare.sock)
        self.pid = spare.pid
        self.sentinel = spare.pidfd
        self.finalizer = util.Finalize(self, util.close_fds, (self.sentinel,))
        return True


def _is_open(fd):
    try:
        os.get_inheritable(fd)
        return True
    except OSError:
        return False


def _start_state():
    """Everything a child spawned now would start from."""
    return (spawn.get_executable(), tuple(spawn.get_command_line(spare=3)),
            dict(os.environb), os.getcwd(), _core.proc_state())


class _Spare:
    __slots__ = ('pid', 'pidfd', 'sock', 'state')

    def discard(self):
        try:
            _core.pidfd_kill(self.pidfd, signal.SIGKILL)
        except OSError:
            pass
        os.close(self.sock)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.pidfd)


class _Spares:
    """The spares of the process that started them. One at first; when a
    start finds its spare still starting up, programs start children faster
    than one interpreter starts, so one more is kept (up to _MAX)."""

    _MAX = max(1, min(4, os.cpu_count() or 1))

    def __init__(self):
        self._spares = []
        self._want = 1
        self._lock = threading.Lock()
        self._hooked = False

    def _hook(self):
        # From the first spawn start on (not at import: a program that never
        # spawns spares its forked children the call).
        if not self._hooked:
            self._hooked = True
            atexit.register(self.clear)
            os.register_at_fork(after_in_child=self._forget_in_child)

    def take(self, state):
        """A spare that a child started now may become, or None."""
        self._hook()
        with self._lock:
            spare = self._spares.pop(0) if self._spares else None
        if spare is None:
            return None
        if spare.state != state or _core.wait_readable(spare.pidfd, 0):
            spare.discard()     # things changed since it started, or it died
            return None
        if _core.wait_readable(spare.sock, 0):
            os.read(spare.sock, 1)      # its "ready" byte
        elif self._want < self._MAX:
            self._want += 1
        return spare

    def start(self, state):
        """Start spares until there are as many as wanted."""
        self._hook()
        while len(self._spares) < self._want:
            spare = self._spawn(state)
            if spare is None:
                return          # no spare: the next start spawns as usual
            with self._lock:
                self._spares.append(spare)

    @staticmethod
    def _spawn(state):
        parent_sock, child_sock = _socketpair()
        try:
            executable, cmd, env, _, _ = state
            pid = _core.spawn(executable, list(cmd), [b'%s=%s' % kv for kv in env.items()],
                              [child_sock], True)
        except OSError:
            os.close(parent_sock)
            return None
        finally:
            os.close(child_sock)
        spare = _Spare()
        spare.pid, spare.sock, spare.state = pid, parent_sock, state
        spare.pidfd = _core.pidfd_open(pid)
        return spare

    def clear(self):
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.discard()

    def _forget_in_child(self):
        # After os.fork(): the spares are the parent's; drop our copies.
        spares, self._spares = self._spares, []
        self._lock = threading.Lock()
        for spare in spares:
            os.close(spare.sock)
            os.close(spare.pidfd)


def _socketpair():
    import socket
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a.detach(), b.detach()


_spare = _Spares()
