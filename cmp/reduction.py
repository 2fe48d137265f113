"""Pickling helpers (mirrors multiprocessing.reduction).

ForkingPickler is a pickle.Pickler whose dispatch table is the reduction
registry chained in front of copyreg's, so registering a reducer never
copies a table and every pickler sees it at once. Connection.send() (in C)
keeps one ForkingPickler per interpreter, made by _new_pickler(), and reuses
it for every message instead of building a pickler (and, in the stdlib, a
copy of the dispatch table) per message.

Descriptors: DupFd(fd) travels to a child being spawned (the Popen hands it
over at start), or, outside of spawning, with the message that
Connection.send() is writing on a Unix socket (SCM_RIGHTS): see
_core._pass_fd / _core._take_fd.
"""
import collections
import copyreg
import io
import pickle

from . import context

__all__ = ['ForkingPickler', 'register', 'dump', 'DupFd']

HAVE_SEND_HANDLE = True
DEFAULT_PROTOCOL = pickle.HIGHEST_PROTOCOL


class ForkingPickler(pickle.Pickler):
    """Pickler honouring the reducers registered with register()."""

    _extra_reducers = {}
    _dispatch = collections.ChainMap(_extra_reducers, copyreg.dispatch_table)

    def __init__(self, file, protocol=None, *args, **kwargs):
        if protocol is None:
            protocol = DEFAULT_PROTOCOL
        super().__init__(file, protocol, *args, **kwargs)
        self.dispatch_table = self._dispatch

    @classmethod
    def register(cls, type, reduce):
        """Register reduce(obj) -> (callable, args) for objects of type."""
        cls._extra_reducers[type] = reduce

    @classmethod
    def dumps(cls, obj, protocol=None):
        buf = io.BytesIO()
        cls(buf, protocol).dump(obj)
        return buf.getbuffer()

    loads = staticmethod(pickle.loads)


register = ForkingPickler.register


class _Sink:
    """The file of the cached pickler: write is the append of a list."""
    __slots__ = ('write',)


def _new_pickler(chunks):
    """A ForkingPickler (protocol 5) whose output pieces are appended to
    chunks, for Connection.send(), which writes them behind the frame
    header and empties the list."""
    sink = _Sink()
    sink.write = chunks.append
    return ForkingPickler(sink, DEFAULT_PROTOCOL)


_loads = pickle.loads


def dump(obj, file, protocol=None):
    """Replacement for pickle.dump() using ForkingPickler."""
    ForkingPickler(file, protocol).dump(obj)


class _DupFd:
    __slots__ = ('token',)

    def __init__(self, token):
        self.token = token

    def detach(self):
        """The descriptor, in the child that unpickled this object."""
        return context._resolve_inherited_fd(self.token)


class _PassedFd:
    """A descriptor that came with a Connection message (SCM_RIGHTS)."""
    __slots__ = ('index', 'fd')

    def __init__(self, index, fd=None):
        self.index = index
        self.fd = fd

    def __reduce__(self):
        return _take_passed_fd, (self.index,)

    def detach(self):
        """The descriptor, now owned by the caller."""
        fd, self.fd = self.fd, None
        if fd is None:
            raise RuntimeError('the passed file descriptor was already detached')
        return fd


def _take_passed_fd(index):
    from . import _core
    return _PassedFd(index, _core._take_fd(index))


def _token_for_child(popen, fd):
    """popen.duplicate_for_child(fd), once per descriptor and child. Several
    cmp objects share a descriptor (the locks of one arena, both ends of a
    Pipe channel); a Popen not cmp's own (loky's) hands its list to
    _posixsubprocess, which refuses a descriptor listed twice."""
    try:
        tokens = popen._cmp_fd_tokens
    except AttributeError:
        tokens = popen._cmp_fd_tokens = {}
    if fd not in tokens:
        tokens[fd] = popen.duplicate_for_child(fd)
    return tokens[fd]


def DupFd(fd):
    """An object whose detach(), in the process that unpickles it, returns
    that process's copy of fd. Use it in __reduce__ of objects that own a
    descriptor. It works while spawning a child (the descriptor is handed
    over at start) and while Connection.send() pickles a message on a Unix
    socket (the descriptor travels with the message); elsewhere it raises
    RuntimeError."""
    popen = context.get_spawning_popen()
    if popen is not None:
        return _DupFd(_token_for_child(popen, fd))
    from . import _core
    return _PassedFd(_core._pass_fd(fd))
