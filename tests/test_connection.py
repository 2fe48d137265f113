"""Pipe, Connection, wait, Listener/Client: differential against the stdlib,
cross-implementation on one socket, malformed frames, signals, descriptors."""
import gc
import os
import pickle
import socket
import struct
import textwrap

import pytest

import cmp
import cmp.connection
import multiprocessing.connection as std_connection
from support import assert_same, run

# Prints the outcome of a call: its value, or the exception's type and text.
TRY = '''
def t(label, f, *a, **k):
    try:
        r = f(*a, **k)
    except BaseException as e:
        print(label, '->', type(e).__name__, e)
    else:
        print(label, '=', repr(r))
'''


def same(code, **kw):
    return assert_same(TRY + textwrap.dedent(code), **kw)


# ---------------------------------------------------------------------------
# Differential: every method and error, stdlib vs cmp

def test_methods_and_values():
    same('''
        a, b = mp.Pipe()
        t('types', lambda: (a.readable, a.writable, a.closed, type(a).__name__))
        a.send({'k': [1, 2.5, 'x', None, (b'y',)]})
        t('recv', b.recv)
        b.send_bytes(b'hello world', 6)
        t('offset', a.recv_bytes)
        b.send_bytes(b'hello world', 2, 3)
        t('offset+size', a.recv_bytes)
        b.send_bytes(bytearray(b'abc'))
        t('bytearray', a.recv_bytes)
        import array
        b.send_bytes(array.array('i', [1, 2, 3]), 4, 4)
        t('array bytes', a.recv_bytes)
        b.send_bytes(b'')
        t('empty', a.recv_bytes)
        b.send_bytes(b'x' * 100000)
        t('large', lambda: len(a.recv_bytes()))
        b.send_bytes(b'12345')
        t('maxlength ok', a.recv_bytes, 5)
        buf = bytearray(10)
        b.send_bytes(b'abc')
        t('into', a.recv_bytes_into, buf, 3)
        print(buf)
        arr = array.array('i', [0] * 4)
        b.send_bytes(array.array('i', [7, 8]))
        t('into array', a.recv_bytes_into, arr, 4)
        print(arr.tolist())
        t('poll empty', a.poll)
        t('poll timeout', a.poll, 0.05)
        b.send(None)
        t('poll ready', a.poll, None)
        t('poll kw', a.poll, timeout=0)
        t('recv None', a.recv)
        with a, b:
            t('fileno', lambda: isinstance(a.fileno(), int))
        t('closed', lambda: (a.closed, b.closed))
        r, w = mp.Pipe(duplex=False)
        t('simplex', lambda: (r.readable, r.writable, w.readable, w.writable))
        w.send(list(range(3)))
        t('simplex recv', r.recv)
    ''')


def test_errors():
    same('''
        a, b = mp.Pipe()
        t('bad offset', b.send_bytes, b'abc', -1)
        t('offset > len', b.send_bytes, b'abc', 4)
        t('size neg', b.send_bytes, b'abc', 0, -1)
        t('size > len', b.send_bytes, b'abc', 1, 3)
        t('not bytes', b.send_bytes, 'str')
        t('negative maxlength', a.recv_bytes, -1)
        buf = bytearray(4)
        t('into negative', a.recv_bytes_into, buf, -1)
        t('into too far', a.recv_bytes_into, buf, 5)
        b.send_bytes(b'abcdefgh')
        try:
            a.recv_bytes_into(buf, 1)
        except mp.BufferTooShort as e:
            print('too short', e.args)
        b.send_bytes(b'0123456789')
        t('maxlength', a.recv_bytes, 4)
        t('after bad length', lambda: (a.readable, a.writable, a.closed))
        t('recv after', a.recv_bytes)
        t('unpicklable', b.send, lambda: 0)
        a.send_bytes(b'not a pickle')
        t('bad pickle', b.recv)
        r, w = mp.Pipe(False)
        t('write-only recv', w.recv)
        t('write-only poll', w.poll)
        t('read-only send', r.send, 1)
        t('read-only send_bytes', r.send_bytes, b'x')
        w.send_bytes(b'0123456789')
        t('simplex maxlength', r.recv_bytes, 4)
        t('simplex after', lambda: r.closed)
        r2, w2 = mp.Pipe(False)
        w2.close()
        t('eof', r2.recv)
        t('eof bytes', r2.recv_bytes)
        r2.close()
        for name in ('recv', 'recv_bytes', 'poll', 'fileno'):
            t('closed ' + name, getattr(r2, name))
        t('closed send', w2.send, 1)
        t('close twice', w2.close)
        x, y = mp.Pipe()
        x.close()
        t('broken pipe', y.send, 1)
        t('eof duplex', y.recv)
        from mp_connection import Connection
        t('invalid handle', Connection, -1)
        t('neither', Connection, 0, False, False)
        t('float handle', Connection, 1.5)
    ''', env={'PYTHONPATH': _shim_path()})


_SHIM = None


def _shim_path():
    """A directory with mp_connection.py re-exporting the module under test
    (chosen by which of multiprocessing/cmp is imported as mp)."""
    global _SHIM
    if _SHIM is None:
        import tempfile
        _SHIM = tempfile.mkdtemp(prefix='cmp-test-shim-')
        with open(os.path.join(_SHIM, 'mp_connection.py'), 'w') as f:
            f.write('import sys\n'
                    "_m = sys.modules.get('cmp') and 'cmp.connection' or "
                    "'multiprocessing.connection'\n"
                    'import importlib\n'
                    'globals().update(vars(importlib.import_module(_m)))\n')
    paths = [_SHIM] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    return os.pathsep.join(paths)


def test_child_processes_and_wait():
    same('''
        def echo(c, n):
            for _ in range(n):
                c.send(c.recv())
            c.close()
        if __name__ == '__main__':
            a, b = mp.Pipe()
            p = mp.Process(target=echo, args=(b, 3)); p.start()
            for obj in (1, 'two', [3]):
                a.send(obj)
                print(a.recv())
            p.join()
            print('sentinel ready', mp.connection.wait([p.sentinel], 5) == [p.sentinel])
    ''')
    same('''
        import time, socket
        def late(c):
            time.sleep(0.3)
            c.send('late')
        if __name__ == '__main__':
            a, b = mp.Pipe()
            r, w = mp.Pipe(False)
            p = mp.Process(target=late, args=(w,)); p.start()
            w.close()
            from mp_connection import wait
            t('timeout', wait, [a, r], 0.05)
            ready = wait([a, r])
            print('first', [x is r for x in ready])
            print('recv', r.recv())
            p.join()
            print('sentinel', wait([p.sentinel], 5) == [p.sentinel])
            s1, s2 = socket.socketpair()
            s2.send(b'x')
            b.send(1)
            s3, s4 = socket.socketpair()
            s4.send(b'y')
            class F:
                def fileno(self):
                    return s3.fileno()
            f = F()
            a2, b2 = mp.Pipe()
            b2.send(2)
            got = wait([r, a, s1, f, a2.fileno()], 1)
            print('mixed', [x is r for x in got], [x is a for x in got],
                  [x is s1 for x in got], [x is f for x in got], got[-1] == a2.fileno())
            try:                        # (descriptor numbers differ: cmp's Pipe has a memfd)
                wait([s1, s1.fileno()], 0)
            except KeyError as e:
                print('duplicate', e.args[0] == '%r (FD %d) is already registered'
                      % (s1, s1.fileno()))
            t('zero', wait, [b], 0)
            t('negative timeout', wait, [b], -1)
            t('empty', wait, [], 0.01)
    ''', env={'PYTHONPATH': _shim_path()})


def test_listener_client():
    same('''
        import threading
        from mp_connection import Listener, Client
        for family in ('AF_UNIX', 'AF_INET'):
            with Listener(family=family, authkey=b'secret') as l:
                print(family, type(l.address).__name__)
                def serve():
                    with l.accept() as c:
                        c.send(c.recv() * 2)
                th = threading.Thread(target=serve); th.start()
                with Client(l.address, authkey=b'secret') as c:
                    c.send(21)
                    print('answer', c.recv())
                th.join()
                print('last_accepted', l.last_accepted is not None)
            l2 = Listener(family=family, authkey=b'right')
            errs = []
            def serve2():
                try:
                    l2.accept()
                except Exception as e:
                    errs.append(type(e).__name__ + ': ' + str(e))
            th = threading.Thread(target=serve2); th.start()
            t('wrong key', Client, l2.address, authkey=b'wrong')
            th.join()
            print('server saw', errs)
            l2.close()
            t('accept closed', l2.accept)
        t('bad authkey', Listener, authkey='str')
        t('bad family', Listener, family='AF_PIPE')
        t('bad address', Client, 42)
        with Listener() as l:
            print('unix default', type(l.address).__name__, l.last_accepted)
            th = threading.Thread(target=lambda: l.accept().send('noauth')); th.start()
            print(Client(l.address).recv())
            th.join()
    ''', env={'PYTHONPATH': _shim_path()})


def test_connection_pickling_outside_spawning():
    # stdlib: works through its resource sharer; cmp: SCM_RIGHTS on the
    # carrying socket. Both: a Connection sent to a running child works.
    same('''
        def child(carrier):
            conn = carrier.recv()
            conn.send(('via passed conn', conn.readable, conn.writable))
            r = carrier.recv()
            print('simplex end', r.readable, r.writable, r.recv())
        if __name__ == '__main__':
            carrier, theirs = mp.Pipe()
            p = mp.Process(target=child, args=(theirs,)); p.start()
            a, b = mp.Pipe()
            carrier.send(b)
            b.close()
            print(a.recv())
            r, w = mp.Pipe(False)
            carrier.send(r)
            w.send('simplex')
            p.join()
            print(p.exitcode)
    ''')


@pytest.mark.parametrize('method', ['fork', 'spawn', 'forkserver'])
def test_connections_to_children(method):
    same('''
        def child(c, r):
            c.send(('child got', r.recv(), r.readable, r.writable))
            c.close()
        if __name__ == '__main__':
            a, b = mp.Pipe()
            r, w = mp.Pipe(duplex=False)
            p = mp.Process(target=child, args=(b, r)); p.start()
            w.send('hello')
            print(a.recv())
            p.join()
            print(p.exitcode)
    ''', start_method=method)


def test_pickling_outside_a_message_goes_through_the_resource_sharer():
    # Where no Unix-socket message carries the descriptor (plain pickle, a
    # simplex pipe), it is lent by the resource sharer, as in the stdlib.
    a, b = cmp.Pipe()
    a2 = pickle.loads(pickle.dumps(a))
    b.send('to the copy')
    assert a2.recv() == 'to the copy'
    r, w = cmp.Pipe(duplex=False)
    w.send(a)             # a pipe cannot carry descriptors: the sharer lends it
    a3 = r.recv()
    b.send('to the third')
    assert a3.recv() == 'to the third'
    for c in (a, a2, a3, b, r, w):
        c.close()


# ---------------------------------------------------------------------------
# Cross-implementation on one socket

def _pair(left, right):
    s1, s2 = socket.socketpair()
    return left.Connection(s1.detach()), right.Connection(s2.detach())


@pytest.mark.parametrize('left,right', [(cmp.connection, std_connection),
                                        (std_connection, cmp.connection)])
def test_cross_implementation(left, right):
    import threading

    def exchange(src, dst, payload, send, recv):
        # in a thread: a message larger than the socket buffer blocks its sender
        th = threading.Thread(target=getattr(src, send), args=(payload,))
        th.start()
        got = getattr(dst, recv)()
        th.join()
        return got

    a, b = _pair(left, right)
    with a, b:
        for payload in (b'', b'x', b'y' * 16384, b'z' * 16385, os.urandom(300000)):
            assert exchange(a, b, payload, 'send_bytes', 'recv_bytes') == payload
            assert exchange(b, a, payload, 'send_bytes', 'recv_bytes') == payload
        obj = {'a': [1, 2, 3], 'b': ('x', None, 2.5), 'c': b'\0' * 700000}
        assert exchange(a, b, obj, 'send', 'recv') == obj
        assert exchange(b, a, obj, 'send', 'recv') == obj
        buf = bytearray(20)
        a.send_bytes(b'hello')
        assert b.recv_bytes_into(buf, 2) == 5 and buf[2:7] == b'hello'
        assert not b.poll()
        a.send(1)
        assert b.poll(1) and b.recv() == 1


@pytest.mark.parametrize('impl', [cmp.connection, std_connection])
def test_long_header_path_is_read(impl):
    # The > 2 GiB form (-1 marker, 8-byte length), simulated with a short
    # payload: both implementations must accept it.
    s1, s2 = socket.socketpair()
    conn = impl.Connection(s2.detach())
    with s1, conn:
        payload = b'long-form'
        s1.sendall(struct.pack('!i', -1) + struct.pack('!Q', len(payload)) + payload)
        assert conn.recv_bytes() == payload
        s1.sendall(struct.pack('!i', -1) + struct.pack('!Q', 3) + b'abc')
        assert conn.recv_bytes(3) == b'abc'


def test_cross_listener_client():
    import threading
    for listen_impl, client_impl in ((cmp.connection, std_connection),
                                     (std_connection, cmp.connection)):
        for family in ('AF_UNIX', 'AF_INET'):
            with listen_impl.Listener(family=family, authkey=b'key') as l:
                def serve():
                    with l.accept() as c:
                        c.send_bytes(c.recv_bytes()[::-1])
                th = threading.Thread(target=serve)
                th.start()
                with client_impl.Client(l.address, authkey=b'key') as c:
                    c.send_bytes(b'abc')
                    assert c.recv_bytes() == b'cba'
                th.join(10)
            # a wrong key fails on both sides
            with listen_impl.Listener(family=family, authkey=b'key') as l:
                errors = []

                def serve_bad():
                    try:
                        l.accept()
                    except Exception as e:
                        errors.append(type(e).__name__)
                th = threading.Thread(target=serve_bad)
                th.start()
                with pytest.raises(Exception) as info:
                    client_impl.Client(l.address, authkey=b'nope')
                assert type(info.value).__name__ == 'AuthenticationError'
                th.join(10)
                assert errors == ['AuthenticationError']


# ---------------------------------------------------------------------------
# Malformed and truncated frames: a clean error, never a crash or a hang

FUZZ = '''
import os, random, socket, struct, sys
import cmp.connection as C
rng = random.Random(int(sys.argv[1]))
outcomes = {}
for i in range(300):
    s1, s2 = socket.socketpair()
    conn = C.Connection(s2.detach())
    kind = rng.randrange(5)
    if kind == 0:
        data = os.urandom(rng.randrange(1, 40))
    elif kind == 1:        # a plausible header, truncated body
        n = rng.randrange(1, 5000)
        data = struct.pack('!i', n) + os.urandom(rng.randrange(0, n))
    elif kind == 2:        # truncated header
        data = struct.pack('!i', rng.randrange(1 << 31))[:rng.randrange(1, 4)]
    elif kind == 3:        # long form, maybe absurd length, truncated
        data = struct.pack('!i', -1) + struct.pack('!Q', rng.randrange(1 << 64))[:rng.randrange(0, 9)]
        data += os.urandom(rng.randrange(0, 30))
    else:                  # negative lengths
        data = struct.pack('!i', -rng.randrange(2, 1 << 31)) + os.urandom(8)
    s1.sendall(data)
    s1.close()
    for _ in range(3):
        try:
            fn = rng.choice([conn.recv_bytes, conn.recv, lambda: conn.recv_bytes(rng.randrange(100)),
                             lambda: conn.recv_bytes_into(bytearray(rng.randrange(64)))])
            fn()
            r = 'ok'
        except (EOFError, OSError, ValueError, MemoryError, pickle_errors) as e:
            r = type(e).__name__
        outcomes[r] = outcomes.get(r, 0) + 1
    conn.close()
print(sorted(outcomes))
'''.replace('pickle_errors', 'Exception')


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_fuzzed_frames(seed):
    r = run(FUZZ, 'cmp', args=(str(seed),), timeout=60)
    assert not r.timed_out, 'hang on malformed frames'
    assert r.returncode == 0, r.stderr
    assert 'EOFError' in r.stdout and 'OSError' in r.stdout


def test_bad_lengths_are_clean_errors():
    s1, s2 = socket.socketpair()
    conn = cmp.connection.Connection(s2.detach())
    s1.sendall(struct.pack('!i', -7))
    with pytest.raises(OSError, match='bad message length'):
        conn.recv_bytes()
    assert not conn.readable and conn.writable and not conn.closed
    conn.close()
    s1.close()
    # a length the bytes type cannot hold
    s1, s2 = socket.socketpair()
    conn = cmp.connection.Connection(s2.detach())
    s1.sendall(struct.pack('!i', -1) + struct.pack('!Q', (1 << 64) - 1))
    with pytest.raises(OSError, match='bad message length'):
        conn.recv_bytes()
    conn.close()
    s1.close()
    # end of file inside a frame
    s1, s2 = socket.socketpair()
    conn = cmp.connection.Connection(s2.detach())
    s1.sendall(struct.pack('!i', 10) + b'abc')
    s1.close()
    with pytest.raises(OSError, match='got end of file during message'):
        conn.recv_bytes()
    with pytest.raises(EOFError):
        conn.recv_bytes()
    conn.close()


# ---------------------------------------------------------------------------
# Signals: Ctrl-C interrupts a blocked call; the Connection stays usable

def test_ctrl_c_interrupts_recv_and_keeps_partial_frame():
    r = run('''
        import os, signal, socket, struct, threading, time
        import cmp.connection as C
        s1, s2 = socket.socketpair()
        conn = C.Connection(s2.detach())
        payload = os.urandom(200000)
        frame = struct.pack('!i', len(payload)) + payload
        def later(delay, f):
            threading.Timer(delay, f).start()
        # 1: nothing arrived yet
        later(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
        t0 = time.monotonic()
        try:
            conn.recv_bytes()
        except KeyboardInterrupt:
            print('interrupted empty', time.monotonic() - t0 < 5)
        # 2: half a frame arrived, then Ctrl-C, then the rest
        s1.sendall(frame[:2])                   # inside the header
        later(0.2, lambda: s1.sendall(frame[2:100000]))
        later(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        try:
            conn.recv_bytes()
        except KeyboardInterrupt:
            print('interrupted partial')
        s1.sendall(frame[100000:])
        print('resumed intact', conn.recv_bytes() == payload)
        # 3: the same through recv_bytes_into, interrupted inside the body
        s1.sendall(frame[:50000])
        later(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
        buf = bytearray(len(payload) + 10)
        try:
            conn.recv_bytes_into(buf)
        except KeyboardInterrupt:
            print('interrupted into')
        s1.sendall(frame[50000:])
        n = conn.recv_bytes_into(buf, 10)
        print('into intact', n == len(payload) and bytes(buf[10:]) == payload)
        # 4: a handler that does not raise: the call goes on (PEP 475)
        signal.signal(signal.SIGUSR1, lambda *a: None)
        later(0.1, lambda: os.kill(os.getpid(), signal.SIGUSR1))
        later(0.3, lambda: s1.sendall(frame))
        print('retried', conn.recv_bytes() == payload)
        # 5: a send interrupted part-way through a frame finishes first next time
        big = os.urandom(8 << 20)
        later(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        try:
            conn.send_bytes(big)
        except KeyboardInterrupt:
            print('send interrupted')
        got = []
        th = threading.Thread(target=lambda: got.extend([C.Connection(os.dup(s1.fileno())).recv_bytes() for _ in range(2)]))
        th.start()
        conn.send_bytes(b'next')
        th.join()
        print('stream intact', got[0] in (big, b'next') and got[-1] == b'next', len(got))
    ''', 'cmp', timeout=60)
    assert not r.timed_out, r.stderr
    assert r.returncode == 0, r.stderr
    assert r.stdout.split('\n')[:-1] == [
        'interrupted empty True', 'interrupted partial', 'resumed intact True',
        'interrupted into', 'into intact True', 'retried True',
        'send interrupted', 'stream intact True 2'], r.stdout


def test_poll_and_wait_release_the_gil_and_time_out():
    import threading
    import time
    a, b = cmp.Pipe()
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)
    th = threading.Thread(target=spin)
    th.start()
    t0 = time.monotonic()
    assert a.poll(0.3) is False
    assert cmp.connection.wait([a], 0.2) == []
    elapsed = time.monotonic() - t0
    stop.set()
    th.join()
    assert elapsed >= 0.5
    assert len(ticks) > 10
    a.close()
    b.close()


# ---------------------------------------------------------------------------
# Reduction registry, cached pickler, descriptors

class Point:
    def __init__(self, x):
        self.x = x


def _rebuild_point(x):
    p = Point(x)
    p.rebuilt = True
    return p


def test_registry_is_honoured_by_the_cached_pickler():
    from cmp import reduction
    a, b = cmp.Pipe()
    a.send(Point(1))                       # pickler made before registering
    assert not hasattr(b.recv(), 'rebuilt')
    reduction.register(Point, lambda p: (_rebuild_point, (p.x * 10,)))
    try:
        a.send([Point(2), Point(3)])
        got = b.recv()
        assert [p.x for p in got] == [20, 30] and all(p.rebuilt for p in got)
    finally:
        del reduction.ForkingPickler._extra_reducers[Point]
    a.send(Point(4))
    assert b.recv().x == 4
    a.close()
    b.close()


class Reentrant:
    conn = None

    def __reduce__(self):
        # A reducer that itself sends: the cached pickler is busy, so this
        # send must use its own.
        Reentrant.conn.send(('inner', [1, 2]))
        return (str, ('outer',))


def test_send_from_a_reducer():
    a, b = cmp.Pipe()
    c, d = cmp.Pipe()
    Reentrant.conn = c
    a.send([Reentrant(), 'tail'])
    assert d.recv() == ('inner', [1, 2])
    assert b.recv() == ['outer', 'tail']
    for x in (a, b, c, d):
        x.close()


def _fd_count():
    gc.collect()        # Connections left for the collector by earlier tests
    return len(os.listdir('/proc/self/fd'))


def test_no_descriptor_leaks():
    before = _fd_count()
    for _ in range(50):
        a, b = cmp.Pipe()
        x, y = cmp.Pipe()
        a.send(x)                          # passed, taken, then closed
        got = b.recv()
        got.close()
        a.send_bytes(b'abc')
        b.recv_bytes()
        for c in (a, b, x, y):
            c.close()
        r, w = cmp.Pipe(False)
        del r, w
    assert _fd_count() == before


def test_unclaimed_passed_descriptors_are_closed():
    a, b = cmp.Pipe()
    x, y = cmp.Pipe()
    before = _fd_count()
    a.send(x)
    assert b.recv_bytes()                  # descriptors arrive with a frame nobody unpickles
    assert _fd_count() == before
    for c in (a, b, x, y):
        c.close()


def test_fork_after_interrupted_state_is_independent():
    # Connection objects survive fork: a child can keep using an inherited end.
    r = run('''
        import cmp.connection as C, cmp, os
        a, b = cmp.Pipe()
        def child(c):
            c.send(os.getpid())
        p = cmp.get_context('fork').Process(target=child, args=(b,))
        p.start(); p.join()
        print(a.recv() == p.pid)
    ''', 'cmp', timeout=30)
    assert r.stdout.strip() == 'True', r.stderr


def test_connection_through_listener_client():
    # AF_UNIX carries descriptors (SCM_RIGHTS); over AF_INET the resource
    # sharer lends them.
    import threading
    for family in ('AF_UNIX', 'AF_INET'):
        with cmp.connection.Listener(family=family) as l:
            got = []
            th = threading.Thread(target=lambda: got.append(l.accept()))
            th.start()
            client = cmp.connection.Client(l.address)
            th.join(10)
            server = got[0]
            a, b = cmp.Pipe()
            client.send(('conn', b))
            tag, b2 = server.recv()
            b2.send('through a listener')
            assert a.recv() == 'through a listener'
            b2.close()
            client.send('still usable')
            assert server.recv() == 'still usable'
            for c in (a, b, client, server):
                c.close()


def test_ctrl_c_interrupts_wait_and_poll():
    r = run('''
        import os, signal, threading, time
        import cmp
        a, b = cmp.Pipe()
        for f in (lambda: cmp.connection.wait([a]), lambda: a.poll(None)):
            threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            t0 = time.monotonic()
            try:
                f()
            except KeyboardInterrupt:
                print('interrupted', time.monotonic() - t0 < 5)
        b.send('ok')
        print(a.recv())
    ''', 'cmp', timeout=30)
    assert r.stdout.split() == ['interrupted', 'True', 'interrupted', 'True', 'ok'], r.stderr
