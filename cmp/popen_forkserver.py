"""Starting a child through the fork server (mirrors multiprocessing.popen_forkserver)."""
import os
import time

from . import _core, forkserver, popen_fork, spawn, util
from . import reduction  # noqa: F401  (names of the stdlib's module)
from .context import set_spawning_popen  # noqa: F401

__all__ = ['Popen']


class Popen(popen_fork.Popen):
    """A child forked by the fork server. Its sentinel is the request's
    connection, which becomes readable when the exit code arrives (from the
    server, or from a child that was a spare as its last act)."""
    method = 'forkserver'

    def __init__(self, process_obj):
        self._fds = []
        super().__init__(process_obj)

    def duplicate_for_child(self, fd):
        self._fds.append(fd)
        return len(self._fds) - 1

    def _launch(self, process_obj):
        server = forkserver._forkserver
        server.ensure_running()
        data = spawn.pickle_for_child(self, process_obj, server._base_prep, server._tracker_pid)
        sock, self.pid = forkserver.connect_to_new_process(
            [popen_fork.self_pidfd(), *self._fds], data)
        self.sentinel = sock
        self.finalizer = util.Finalize(self, util.close_fds, (sock,))

    def poll(self, flag=os.WNOHANG):
        return self.wait(0 if flag == os.WNOHANG else None)

    def wait(self, timeout=None):
        # The exit code is the first answer after the pid that is not the
        # pid again (a spare answers with it too when the server is gone
        # before it did).
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not _core.wait_readable(self.sentinel, left):
                return None
            try:
                code = forkserver.read_signed(self.sentinel)
            except (OSError, EOFError):
                code = 255              # the server died: the status is lost
            if code < _core.FORKSERVER_PID_TAG:
                self.returncode = code
        return self.returncode

    def _kill_child(self, sig):
        # The sentinel is the request socket, not a pidfd: the child is the
        # server's, so signal it by pid.
        os.kill(self.pid, sig)
