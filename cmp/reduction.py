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
_core._pass_fd / _core._take_fd. Anywhere else (a simplex Pipe, an AF_INET
connection, a Queue, pickle.dumps) it is lent through the resource sharer,
as the stdlib does always.

send_handle/recv_handle on a cmp Connection send the descriptor inside a
message, so they work on any Connection and interleave with its other
messages (on a Pipe() the descriptor itself carries no data); on any other
object with a fileno() (a socket) they use the stdlib's raw form, sendfds.
"""
import collections
import copyreg
import errno
import functools
import io
import pickle
import socket
from abc import ABCMeta

from . import context

__all__ = ['send_handle', 'recv_handle', 'ForkingPickler', 'register', 'dump',
           'DupFd', 'sendfds', 'recvfds']

HAVE_SEND_HANDLE = True
ACKNOWLEDGE = False     # only macOS needs an acknowledgement of passed fds
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
    descriptor. While spawning a child the descriptor is handed over at
    start; while Connection.send() pickles a message on a Unix socket it
    travels with the message; elsewhere the resource sharer lends it."""
    popen = context.get_spawning_popen()
    if popen is not None:
        # A Popen of another library (loky's) brings its own wrapper class.
        wrap = getattr(popen, 'DupFd', _DupFd)
        return wrap(_token_for_child(popen, fd))
    from . import _core
    try:
        return _PassedFd(_core._pass_fd(fd))
    except (RuntimeError, ValueError):
        # No message on a Unix socket to carry it (or it is full).
        from . import resource_sharer
        return resource_sharer.DupFd(fd)


# ---------------------------------------------------------------------------
# Passing descriptors between running processes

def sendfds(sock, fds):
    """Send a list of fds over an AF_UNIX socket."""
    import array
    fds = array.array('i', fds)
    msg = bytes([len(fds) % 256])
    sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])


def recvfds(sock, size):
    """Receive a list of (at most size) fds from an AF_UNIX socket."""
    import array
    a = array.array('i')
    msg, ancdata, flags, addr = sock.recvmsg(1, socket.CMSG_SPACE(a.itemsize * size))
    if not msg and not ancdata:
        raise EOFError
    if len(ancdata) != 1:
        raise RuntimeError('received %d items of ancdata' % len(ancdata))
    level, kind, data = ancdata[0]
    if (level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS
            or len(data) % a.itemsize or not msg):
        raise RuntimeError('Invalid data received')
    a.frombytes(data)
    if len(a) % 256 != msg[0]:
        raise AssertionError('Len is {0:n} but msg[0] is {1!r}'.format(len(a), msg[0]))
    return list(a)


class _Handle:
    """The message send_handle() sends: it pickles as a DupFd of fd, made
    while the Connection pickles it (so the descriptor rides along)."""
    __slots__ = ('fd',)

    def __init__(self, fd):
        self.fd = fd

    def __reduce__(self):
        return _received_handle, (DupFd(self.fd),)


def _received_handle(df):
    return df


def send_handle(conn, handle, destination_pid):
    """Send a descriptor over a connection to a running process."""
    from . import _core
    if isinstance(conn, _core.Connection):
        conn.send(_Handle(handle))
        return
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
        sendfds(s, [handle])


def recv_handle(conn):
    """Receive a descriptor sent with send_handle(); the caller owns it."""
    from . import _core
    if isinstance(conn, _core.Connection):
        try:
            df = conn.recv()
        except OSError as e:
            if e.errno != errno.EPROTO:
                raise
            # Bytes written to the descriptor itself, without one: the stdlib's words.
            raise RuntimeError('received 0 items of ancdata') from None
        if not hasattr(df, 'detach'):
            raise RuntimeError('expected a handle from send_handle(), got %s'
                               % type(df).__name__)
        return df.detach()
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
        return recvfds(s, 1)[0]


# ---------------------------------------------------------------------------
# Reductions the stdlib registers: methods, method descriptors, partials and
# sockets (their descriptor goes with DupFd)

def _reduce_method(m):
    if m.__self__ is None:
        return getattr, (m.__class__, m.__func__.__name__)
    return getattr, (m.__self__, m.__func__.__name__)


class _C:
    def f(self):
        pass


def _reduce_method_descriptor(m):
    return getattr, (m.__objclass__, m.__name__)


def _reduce_partial(p):
    return _rebuild_partial, (p.func, p.args, p.keywords or {})


def _rebuild_partial(func, args, keywords):
    return functools.partial(func, *args, **keywords)


def _reduce_socket(s):
    return _rebuild_socket, (DupFd(s.fileno()), s.family, s.type, s.proto)


def _rebuild_socket(df, family, type, proto):
    return socket.socket(family, type, proto, fileno=df.detach())


def _register_defaults():
    register(type(_C().f), _reduce_method)
    register(type(list.append), _reduce_method_descriptor)
    register(type(int.__add__), _reduce_method_descriptor)
    register(functools.partial, _reduce_partial)
    register(socket.socket, _reduce_socket)


_register_defaults()


class AbstractReducer(metaclass=ABCMeta):  # noqa: B024  (the stdlib's has none either)
    """Base of a replacement reduction module for a context's `reducer`:
    it carries this module's functions; instantiating it registers the
    default reductions again."""
    ForkingPickler = ForkingPickler
    register = register
    dump = dump
    send_handle = send_handle
    recv_handle = recv_handle
    sendfds = sendfds
    recvfds = recvfds
    DupFd = DupFd
    _reduce_method = _reduce_method
    _reduce_method_descriptor = _reduce_method_descriptor
    _rebuild_partial = _rebuild_partial
    _reduce_socket = _reduce_socket
    _rebuild_socket = _rebuild_socket

    def __init__(self, *args):
        _register_defaults()
