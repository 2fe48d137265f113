"""Connections, Pipe, wait, Listener and Client (mirrors multiprocessing.connection).

The framing, pickling, polling and waiting are C (cmp._core.Connection and
cmp._core.wait); this module adds the Python-level parts: pickling of
Connection objects, Pipe(), the socket Listener/Client and the stdlib's
authentication handshake (HMAC-MD5 challenge, as in 3.11), so either end of
a socket may be cmp and the other the stdlib.

Passing a Connection to another process:
- to a child being started: inherited with fork; pickled with the Process
  object under spawn and forkserver (the descriptor is handed over at start);
- to a process already running: send it through another Connection on a
  Unix socket (a duplex Pipe(), or Listener/Client with AF_UNIX): the
  descriptor travels with that message as SCM_RIGHTS. The stdlib instead
  runs a "resource sharer" thread with its own listening socket; cmp needs
  no thread and no socket. A simplex Pipe(duplex=False) or an AF_INET
  connection cannot carry descriptors: sending a Connection through one
  raises RuntimeError.

Differences from the stdlib, all where it loses data or fails late:
- a receive interrupted by a signal handler that raises (Ctrl-C) keeps the
  part of the frame already read, and the next receive completes it; a send
  interrupted part-way through a frame writes the rest before the next frame
  (the stdlib loses the partial frame and the stream is out of step);
- a negative length other than the long-form marker is "bad message length"
  (the stdlib returns b'' and reads the rest as further frames);
- recv_bytes_into() checks that the buffer is writable before it takes a
  message (the stdlib consumes the message, then fails).
"""
import itertools
import os
import socket
import tempfile

from . import _core, process, reduction, util
from .context import AuthenticationError, BufferTooShort

__all__ = ['Client', 'Listener', 'Pipe', 'wait']

BUFSIZE = 8192
CONNECTION_TIMEOUT = 20.

default_family = 'AF_UNIX'
families = ['AF_UNIX', 'AF_INET']

_mmap_counter = itertools.count()


# ---------------------------------------------------------------------------
# Connection

class Connection(_core.Connection):
    """A connection over a file descriptor: a socket or one end of a pipe.

    Connection(handle, readable=True, writable=True). The methods are those
    of multiprocessing.connection.Connection: send, recv, send_bytes,
    recv_bytes, recv_bytes_into, poll, fileno, close, closed, readable,
    writable; it is a context manager that closes on exit.
    """

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()

    @property
    def _handle(self):
        """The descriptor, or None once closed."""
        return _core.Connection._handle.__get__(self)

    @_handle.setter
    def _handle(self, value):
        # Code written for the stdlib sets it to None to forget the descriptor
        # without closing it (CPython's tests do, for one they made up).
        if value is not None:
            raise ValueError('Connection._handle can only be set to None')
        if not self.closed:
            self._detach()

    def __reduce__(self):
        handle = self._handle
        if handle is None:
            raise OSError('handle is closed')
        df = reduction.DupFd(handle)
        chan = self._ring_share()
        if chan is None:
            return rebuild_connection, (df, self.readable, self.writable)
        memfd, size, end, exact = chan
        return rebuild_connection, (df, self.readable, self.writable,
                                    (reduction.DupFd(memfd), size, end, exact))


def reduce_connection(conn):
    return conn.__reduce__()


def rebuild_connection(df, readable, writable, chan=None):
    conn = Connection(df.detach(), readable, writable)
    if chan is not None:
        mdf, size, end, exact = chan
        memfd = mdf.detach()
        try:
            conn._ring_attach(memfd, size, end, exact)
        except BaseException:
            os.close(memfd)
            conn.close()
            raise
    return conn


wait = _core.wait


def Pipe(duplex=True):
    """A pair (conn1, conn2) of Connections joined by a pipe; if not duplex,
    conn1 only receives and conn2 only sends.

    Messages travel through rings in shared memory; the descriptors (a Unix
    SOCK_SEQPACKET socketpair if duplex, else an os.pipe()) carry only
    wake-ups, end of file and passed descriptors (see src/core/chan.h). When
    no channel is to be had (descriptors scarce, or no shared memory), the
    pair is a plain socketpair or pipe carrying the stdlib's frames."""
    pair = _core._pipe(Connection, duplex)
    if pair is not None:
        return pair
    if duplex:
        s1, s2 = socket.socketpair()
        s1.setblocking(True)
        s2.setblocking(True)
        c1 = Connection(s1.detach())
        c2 = Connection(s2.detach())
    else:
        fd1, fd2 = os.pipe()
        c1 = Connection(fd1, writable=False)
        c2 = Connection(fd2, readable=False)
    return c1, c2


# ---------------------------------------------------------------------------
# Addresses

_is_abstract_socket_namespace = util.is_abstract_socket_namespace


def arbitrary_address(family):
    """An unused address of the given family."""
    if family == 'AF_INET':
        return ('localhost', 0)
    if family == 'AF_UNIX':
        return tempfile.mktemp(prefix='listener-', dir=util.get_temp_dir())
    if family == 'AF_PIPE':
        return tempfile.mktemp(prefix=r'\\.\pipe\pyc-%d-%d-'
                               % (os.getpid(), next(_mmap_counter)), dir='')
    raise ValueError('unrecognized family')


def _validate_family(family):
    if family == 'AF_PIPE':
        raise ValueError('Family %s is not recognized.' % family)


def address_type(address):
    """'AF_INET', 'AF_UNIX' or 'AF_PIPE', from the form of address."""
    if type(address) == tuple:
        return 'AF_INET'
    if type(address) is str and address.startswith('\\\\'):
        return 'AF_PIPE'
    if type(address) is str or _is_abstract_socket_namespace(address):
        return 'AF_UNIX'
    raise ValueError('address type of %r unrecognized' % (address,))


# ---------------------------------------------------------------------------
# Listener and Client

class Listener:
    """A bound, listening socket whose accept() returns Connections.

    With an authkey (bytes), each accepted connection runs the stdlib's
    challenge/response handshake both ways, raising AuthenticationError on
    a wrong key.
    """

    def __init__(self, address=None, family=None, backlog=1, authkey=None):
        family = family or (address and address_type(address)) or default_family
        address = address or arbitrary_address(family)
        _validate_family(family)
        self._listener = SocketListener(address, family, backlog)
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError('authkey should be a byte string')
        self._authkey = authkey

    def accept(self):
        """Accept a connection; returns a Connection."""
        if self._listener is None:
            raise OSError('listener is closed')
        c = self._listener.accept()
        if self._authkey is not None:        # b'' too: the Client handshakes with it
            deliver_challenge(c, self._authkey)
            answer_challenge(c, self._authkey)
        return c

    def close(self):
        """Close the listening socket (and unlink its Unix path)."""
        listener = self._listener
        if listener is not None:
            self._listener = None
            listener.close()

    @property
    def address(self):
        return self._listener._address

    @property
    def last_accepted(self):
        return self._listener._last_accepted

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()


def Client(address, family=None, authkey=None):
    """A Connection to the Listener at address."""
    family = family or address_type(address)
    _validate_family(family)
    c = SocketClient(address)
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError('authkey should be a byte string')
    if authkey is not None:
        answer_challenge(c, authkey)
        deliver_challenge(c, authkey)
    return c


class SocketListener:
    """A socket bound to an address and listening."""

    def __init__(self, address, family, backlog=1):
        self._socket = socket.socket(getattr(socket, family))
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.setblocking(True)
            self._socket.bind(address)
            self._socket.listen(backlog)
            self._address = self._socket.getsockname()
        except OSError:
            self._socket.close()
            raise
        self._family = family
        self._last_accepted = None
        if family == 'AF_UNIX' and not _is_abstract_socket_namespace(address):
            self._unlink = util.Finalize(self, os.unlink, args=(address,),
                                         exitpriority=0)
        else:
            self._unlink = None

    def accept(self):
        s, self._last_accepted = self._socket.accept()
        s.setblocking(True)
        return Connection(s.detach())

    def close(self):
        try:
            self._socket.close()
        finally:
            unlink = self._unlink
            if unlink is not None:
                self._unlink = None
                unlink()


def SocketClient(address):
    """A Connection to the socket listening at address."""
    family = address_type(address)
    with socket.socket(getattr(socket, family)) as s:
        s.setblocking(True)
        s.connect(address)
        return Connection(s.detach())


# ---------------------------------------------------------------------------
# Authentication: the stdlib's (3.11) handshake, byte for byte

MESSAGE_LENGTH = 20

CHALLENGE = b'#CHALLENGE#'
WELCOME = b'#WELCOME#'
FAILURE = b'#FAILURE#'


def deliver_challenge(connection, authkey):
    import hmac
    if not isinstance(authkey, bytes):
        raise ValueError("Authkey must be bytes, not {0!s}".format(type(authkey)))
    message = os.urandom(MESSAGE_LENGTH)
    connection.send_bytes(CHALLENGE + message)
    digest = hmac.new(authkey, message, 'md5').digest()
    response = connection.recv_bytes(256)        # reject large message
    if hmac.compare_digest(response, digest):
        connection.send_bytes(WELCOME)
    else:
        connection.send_bytes(FAILURE)
        raise AuthenticationError('digest received was wrong')


def answer_challenge(connection, authkey):
    import hmac
    if not isinstance(authkey, bytes):
        raise ValueError("Authkey must be bytes, not {0!s}".format(type(authkey)))
    message = connection.recv_bytes(256)         # reject large message
    assert message[:len(CHALLENGE)] == CHALLENGE, 'message = %r' % message
    message = message[len(CHALLENGE):]
    digest = hmac.new(authkey, message, 'md5').digest()
    connection.send_bytes(digest)
    response = connection.recv_bytes(256)        # reject large message
    if response != WELCOME:
        raise AuthenticationError('digest sent was rejected')


# ---------------------------------------------------------------------------
# xmlrpclib serialization (the stdlib's XmlListener / XmlClient)

class ConnectionWrapper:
    def __init__(self, conn, dumps, loads):
        self._conn = conn
        self._dumps = dumps
        self._loads = loads
        for attr in ('fileno', 'close', 'poll', 'recv_bytes', 'send_bytes'):
            setattr(self, attr, getattr(conn, attr))

    def send(self, obj):
        self._conn.send_bytes(self._dumps(obj))

    def recv(self):
        return self._loads(self._conn.recv_bytes())


def _xml_dumps(obj):
    import xmlrpc.client
    return xmlrpc.client.dumps((obj,), None, None, None, 1).encode('utf-8')


def _xml_loads(s):
    import xmlrpc.client
    (obj,), method = xmlrpc.client.loads(s.decode('utf-8'))
    return obj


class XmlListener(Listener):
    def accept(self):
        obj = Listener.accept(self)
        return ConnectionWrapper(obj, _xml_dumps, _xml_loads)


def XmlClient(*args, **kwds):
    return ConnectionWrapper(Client(*args, **kwds), _xml_dumps, _xml_loads)


