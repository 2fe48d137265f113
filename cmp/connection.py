"""Connections, Pipe, wait, Listener and Client (mirrors multiprocessing.connection).

The framing, pickling, polling and waiting are C (cmp._core.Connection and
cmp._core.wait); this module adds the Python-level parts: pickling of
Connection objects, Pipe(), the socket Listener/Client and the stdlib's
authentication handshake (that of the running version's stdlib), so either end of
a socket may be cmp and the other the stdlib.

Passing a Connection to another process:
- to a child being started: inherited with fork; pickled with the Process
  object under spawn and forkserver (the descriptor is handed over at start);
- to a process already running: send it through another Connection on a
  Unix socket (a duplex Pipe(), or Listener/Client with AF_UNIX): the
  descriptor travels with that message as SCM_RIGHTS. The stdlib instead
  always goes through its "resource sharer" thread and listening socket;
  cmp does only where no message can carry the descriptor (a simplex
  Pipe(duplex=False), an AF_INET connection, a Queue): see resource_sharer.

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

from . import _core, _versions, reduction, util
from .context import AuthenticationError, BufferTooShort

__all__ = ['Client', 'Listener', 'Pipe', 'wait']

BUFSIZE = _versions.CONNECTION_BUFSIZE
CONNECTION_TIMEOUT = 20.

default_family = 'AF_UNIX'
families = ['AF_INET', 'AF_UNIX']

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
        """The descriptor, or None once closed. Setting it to None forgets
        the descriptor without closing it (code written for the stdlib does
        this to a Connection over a descriptor it does not own)."""
        return _core.Connection._handle.__get__(self)

    @_handle.setter
    def _handle(self, value):
        if value is not None:
            raise ValueError('a Connection\'s _handle can only be set to None')
        if _core.Connection._handle.__get__(self) is not None:
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


class _ChannelConnection(Connection):
    """A Pipe() end whose messages go through a shared-memory channel.

    The stdlib's Connection is its descriptor alone, so other picklers
    register reducers for Connection that send only that (loky does); such
    an end would arrive without its channel and read end of file. Pickle
    looks reducers up by exact type, so channel ends are this subclass and
    keep Connection.__reduce__, which sends the channel too. Its name is
    the stdlib's, for reprs and type(conn).__name__."""

    __slots__ = ()


_ChannelConnection.__name__ = _ChannelConnection.__qualname__ = 'Connection'


def reduce_connection(conn):
    return conn.__reduce__()


def rebuild_connection(df, readable, writable, chan=None):
    cls = Connection if chan is None else _ChannelConnection
    conn = cls(df.detach(), readable, writable)
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
    pair = _core._pipe(_ChannelConnection, duplex)
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

_get_temp_dir = util.get_temp_dir
_is_abstract_socket_namespace = util.is_abstract_socket_namespace


def arbitrary_address(family):
    """An unused address of the given family."""
    if family == 'AF_INET':
        return ('localhost', 0)
    import tempfile     # here: a program that never asks keeps it unimported
    if family == 'AF_UNIX':
        if _versions.SOCK_ADDRESS_PREFIX:
            return os.path.join(_get_temp_dir(),
                                _versions.SOCK_ADDRESS_PREFIX + os.urandom(6).hex())
        return tempfile.mktemp(prefix='listener-', dir=_get_temp_dir())
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
        _validate_family(family)
        if authkey is not None and not isinstance(authkey, bytes):
            raise TypeError('authkey should be a byte string')
        address = address or arbitrary_address(family)
        self._listener = SocketListener(address, family, backlog)
        self._authkey = authkey

    def accept(self):
        """Accept a connection; returns a Connection."""
        if self._listener is None:
            raise OSError('listener is closed')
        c = self._listener.accept()
        if _authenticates(self._authkey):
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


def _authenticates(authkey):
    """Whether Listener.accept() runs the handshake: for any key from 3.12
    (b'' too), for a non-empty one before."""
    return authkey is not None if _versions.HMAC_NAMES_DIGEST else bool(authkey)


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
# Authentication: the running version's stdlib handshake, byte for byte.
# From 3.12 a challenge names its digest ({sha256}), and an answer may too; a
# 20-byte challenge or a 16-byte answer is the legacy HMAC-MD5 of 3.11, which
# both sides still accept.

MESSAGE_LENGTH = 40 if _versions.HMAC_NAMES_DIGEST else 20

_CHALLENGE = b'#CHALLENGE#'
_WELCOME = b'#WELCOME#'
_FAILURE = b'#FAILURE#'
if not _versions.HMAC_NAMES_DIGEST:        # their public names until 3.12
    CHALLENGE, WELCOME, FAILURE = _CHALLENGE, _WELCOME, _FAILURE

_ALLOWED_DIGESTS = frozenset({b'md5', b'sha256', b'sha384', b'sha3_256', b'sha3_384'})
_MAX_DIGEST_LEN = max(map(len, _ALLOWED_DIGESTS))
_MD5ONLY_MESSAGE_LENGTH = 20      # a 3.11 challenge
_MD5_DIGEST_LEN = 16              # a 3.11 answer


def _get_digest_name_and_payload(message):
    """('sha256', payload) for b'{sha256}payload'; ('', message) for a legacy
    MD5 message (16 or 20 bytes); AuthenticationError for anything else."""
    if len(message) in (_MD5ONLY_MESSAGE_LENGTH, _MD5_DIGEST_LEN):
        return '', message
    if message.startswith(b'{'):
        end = message.find(b'}', 1, _MAX_DIGEST_LEN + 2)
        if end > 0 and message[1:end] in _ALLOWED_DIGESTS:
            return message[1:end].decode('ascii'), message[end + 1:]
    raise AuthenticationError('unsupported message length, missing digest prefix, '
                              f'or unsupported digest: {message=}')


def _create_response(authkey, message):
    """The answer to a challenge: raw HMAC-MD5 for a legacy one, else
    b'{name}' + HMAC of the whole message with the digest it names."""
    import hmac
    name = _get_digest_name_and_payload(message)[0]
    if not name:
        try:
            return hmac.new(authkey, message, 'md5').digest()
        except ValueError:      # no MD5 here (FIPS): answer the modern way
            name = 'sha256'
    return b'{%s}%s' % (name.encode('ascii'), hmac.new(authkey, message, name).digest())


def _verify_challenge(authkey, message, response):
    """Check an answer to our challenge, with the digest the answer names."""
    import hmac
    name, mac = _get_digest_name_and_payload(response)
    name = name or 'md5'
    try:
        expected = hmac.new(authkey, message, name).digest()
    except ValueError:
        raise AuthenticationError(f'{name=} unsupported') from None
    if len(expected) != len(mac):
        raise AuthenticationError(f'expected {name!r} of length {len(expected)} '
                                  f'got {len(mac)}')
    if not hmac.compare_digest(expected, mac):
        raise AuthenticationError('digest received was wrong')


def _check_authkey(authkey):
    if not isinstance(authkey, bytes):
        raise ValueError("Authkey must be bytes, not {0!s}".format(type(authkey)))


if _versions.HMAC_NAMES_DIGEST:
    def deliver_challenge(connection, authkey: bytes, digest_name='sha256'):
        _check_authkey(authkey)
        message = b'{%s}%s' % (digest_name.encode('ascii'), os.urandom(MESSAGE_LENGTH))
        connection.send_bytes(_CHALLENGE + message)
        response = connection.recv_bytes(256)        # reject large message
        try:
            _verify_challenge(authkey, message, response)
        except AuthenticationError:
            connection.send_bytes(_FAILURE)
            raise
        connection.send_bytes(_WELCOME)

    def answer_challenge(connection, authkey: bytes):
        _check_authkey(authkey)
        message = connection.recv_bytes(256)         # reject large message
        if not message.startswith(_CHALLENGE):
            raise AuthenticationError(f'Protocol error, expected challenge: {message=}')
        message = message[len(_CHALLENGE):]
        if len(message) < _MD5ONLY_MESSAGE_LENGTH:
            raise AuthenticationError(f'challenge too short: {len(message)} bytes')
        connection.send_bytes(_create_response(authkey, message))
        if connection.recv_bytes(256) != _WELCOME:
            raise AuthenticationError('digest sent was rejected')
else:
    def deliver_challenge(connection, authkey):
        import hmac
        _check_authkey(authkey)
        message = os.urandom(MESSAGE_LENGTH)
        connection.send_bytes(_CHALLENGE + message)
        digest = hmac.new(authkey, message, 'md5').digest()
        response = connection.recv_bytes(256)        # reject large message
        if hmac.compare_digest(response, digest):
            connection.send_bytes(_WELCOME)
        else:
            connection.send_bytes(_FAILURE)
            raise AuthenticationError('digest received was wrong')

    def answer_challenge(connection, authkey):
        import hmac
        _check_authkey(authkey)
        message = connection.recv_bytes(256)         # reject large message
        assert message[:len(_CHALLENGE)] == _CHALLENGE, 'message = %r' % message
        message = message[len(_CHALLENGE):]
        connection.send_bytes(hmac.new(authkey, message, 'md5').digest())
        if connection.recv_bytes(256) != _WELCOME:
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


