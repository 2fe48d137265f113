"""Starting a child as a fresh interpreter (mirrors multiprocessing.popen_spawn_posix)."""
import os
import threading

from . import _core, popen_fork, spawn, util
from . import reduction  # noqa: F401  (names of the stdlib's module)
from .context import set_spawning_popen  # noqa: F401

__all__ = ['Popen']


class Popen(popen_fork.Popen):
    """A child started by posix_spawn of the interpreter; it reads its
    preparation data and Process object from a pipe."""
    method = 'spawn'

    def __init__(self, process_obj):
        self._fds = []
        super().__init__(process_obj)

    def duplicate_for_child(self, fd):
        self._fds.append(fd)
        return fd

    def _launch(self, process_obj):
        data = spawn.pickle_for_child(self, process_obj)

        child_r, parent_w = os.pipe()
        try:
            main = threading.current_thread() is threading.main_thread()
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
