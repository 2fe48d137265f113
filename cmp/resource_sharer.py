"""Hands descriptors to processes that are already running (mirrors
multiprocessing.resource_sharer).

cmp passes a descriptor with the message that carries it whenever it can
(SCM_RIGHTS on a Unix-socket Connection, or at start to a child being
spawned): see reduction.DupFd. Where it cannot -- a message on a simplex
Pipe, an AF_INET connection or a Queue, or plain pickle.dumps -- DupFd(fd)
lends the descriptor to this process's sharer: a thread listening on an
abstract Unix socket (no file to leave behind), started on first use, authenticated with the
program's authkey. The process that unpickles the DupFd connects, names the
key, and is sent the descriptor once; the sharer then closes its copy.
A DupFd that is never detached keeps its copy until stop() or exit, as in
the stdlib.
"""
import os
import signal
import sys
import threading

from . import process, reduction, util

__all__ = ['DupFd', 'stop']


class DupFd:
    """A picklable loan of a duplicate of fd; detach() in the process that
    unpickled it returns that process's own descriptor (once)."""

    def __init__(self, fd):
        new_fd = os.dup(fd)

        def send(conn, pid):
            reduction.send_handle(conn, new_fd, pid)

        def close():
            os.close(new_fd)

        self._id = _resource_sharer.register(send, close)

    def detach(self):
        """Get the descriptor. This should only be called once."""
        with _resource_sharer.get_connection(self._id) as conn:
            return reduction.recv_handle(conn)


class _ResourceSharer:
    """The thread that serves the loans: key -> (send, close)."""

    def __init__(self):
        self._key = 0
        self._cache = {}
        self._lock = threading.Lock()
        self._listener = None
        self._address = None
        self._thread = None
        util.register_after_fork(self, _ResourceSharer._afterfork)

    def register(self, send, close):
        """Lend a resource; the (address, key) to claim it by."""
        with self._lock:
            if self._address is None:
                self._start()
            self._key += 1
            self._cache[self._key] = (send, close)
            return (self._address, self._key)

    @staticmethod
    def get_connection(ident):
        """A connection to the sharer that lent ident, having claimed it."""
        from .connection import Client
        address, key = ident
        c = Client(address, authkey=process.current_process().authkey)
        c.send((key, os.getpid()))
        return c

    def stop(self, timeout=None):
        """Stop the sharer thread and close what was never claimed."""
        from .connection import Client
        with self._lock:
            if self._address is not None:
                c = Client(self._address, authkey=process.current_process().authkey)
                c.send(None)
                c.close()
                self._thread.join(timeout)
                if self._thread.is_alive():
                    util.sub_warning('_ResourceSharer thread did not stop when asked')
                self._listener.close()
                self._thread = None
                self._address = None
                self._listener = None
            self._close_all()

    def _close_all(self):
        for send, close in self._cache.values():
            close()
        self._cache.clear()

    def _afterfork(self):
        # The parent's loans and its thread are not this process's: a
        # forked child starts with none (and leaves the parent's socket be).
        self._close_all()
        self._lock = threading.Lock()
        if self._listener is not None:
            self._listener.close()      # abstract: nothing to unlink
        self._listener = None
        self._address = None
        self._thread = None

    def _start(self):
        from .connection import Listener
        assert self._listener is None, 'Already have Listener'
        util.debug('starting listener and thread for sending handles')
        address = '\0cmp-sharer-%d-%s' % (os.getpid(), os.urandom(6).hex())
        self._listener = Listener(address, 'AF_UNIX', backlog=128,
                                  authkey=process.current_process().authkey)
        self._address = self._listener.address
        t = threading.Thread(target=self._serve, name='cmp-resource-sharer', daemon=True)
        t.start()
        self._thread = t

    def _serve(self):
        if hasattr(signal, 'pthread_sigmask'):
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            try:
                with self._listener.accept() as conn:
                    msg = conn.recv()
                    if msg is None:
                        break
                    key, destination_pid = msg
                    send, close = self._cache.pop(key)
                    try:
                        send(conn, destination_pid)
                    finally:
                        close()
            except Exception:
                if not util.is_exiting():
                    sys.excepthook(*sys.exc_info())


_resource_sharer = _ResourceSharer()
stop = _resource_sharer.stop
