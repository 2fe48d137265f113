"""Pickling helpers (mirrors multiprocessing.reduction).

ForkingPickler is a pickle.Pickler whose dispatch table is the reduction
registry chained in front of copyreg's, so registering a reducer never
copies a table and every pickler sees it at once.
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


def DupFd(fd):
    """While spawning a child, an object whose detach() in the child returns
    that child's copy of fd. Use it in __reduce__ of objects that own a
    descriptor; it raises the stdlib's RuntimeError outside of spawning."""
    popen = context.get_spawning_popen()
    if popen is None:
        raise RuntimeError('file descriptors can only be passed to a child '
                           'process while it is being spawned')
    return _DupFd(popen.duplicate_for_child(fd))
