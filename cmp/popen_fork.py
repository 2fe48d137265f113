"""Starting a child with fork(2), in C (mirrors multiprocessing.popen_fork)."""
import os
import signal

from . import _core, util

__all__ = ['Popen']

# (pid, a pidfd of the process pid): opened once per process and inherited
# by forked children as their parent's sentinel (a child cannot open one for
# a parent that may already be gone without racing against pid reuse). In
# a child the inherited one names the parent: it stays open as that
# sentinel, and the child opens its own when it needs one.
_self_pidfd = None


def self_pidfd():
    global _self_pidfd
    pid = os.getpid()
    if _self_pidfd is None or _self_pidfd[0] != pid:
        _self_pidfd = (pid, _core.pidfd_open(pid))
    return _self_pidfd[1]


class Popen:
    """A started child: pid, sentinel (a pidfd), exit status."""
    method = 'fork'

    def __init__(self, process_obj):
        self.returncode = None
        self.finalizer = None
        self._launch(process_obj)

    def duplicate_for_child(self, fd):
        return fd

    def _launch(self, process_obj):
        parent_fd = self_pidfd()
        pid = _core.fork(bool(process_obj.daemon), parent_fd)
        if pid == 0:
            code = 1
            try:
                util._forked_child_atexit()
                code = process_obj._bootstrap(parent_sentinel=parent_fd)
            finally:
                util._forked_child_exit(code)
        self.pid = pid
        self.sentinel = _core.pidfd_open(pid)
        self.finalizer = util.Finalize(self, util.close_fds, (self.sentinel,))

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            if flag != os.WNOHANG and not _core.wait_readable(self.sentinel, None):
                return None
            try:
                self.returncode = _core.reap(self.pid)
            except ChildProcessError:
                # Reaped behind our back (os.wait(), SIGCHLD ignored): the
                # status is lost, as with the stdlib.
                return None
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if not _core.wait_readable(self.sentinel, timeout):
                return None
            return self.poll()
        return self.returncode

    def _send_signal(self, sig):
        if self.returncode is None:
            try:
                self._kill_child(sig)
            except ProcessLookupError:
                pass

    def _kill_child(self, sig):
        # Through the pidfd: a recycled pid can never be hit.
        _core.pidfd_kill(self.sentinel, sig)

    def interrupt(self):
        self._send_signal(signal.SIGINT)

    def terminate(self):
        self._send_signal(signal.SIGTERM)

    def kill(self):
        self._send_signal(signal.SIGKILL)

    def close(self):
        if self.finalizer is not None:
            self.finalizer()
