"""Descriptors and Connections sent to processes that are already running:
reduction.DupFd, send_handle/recv_handle, sendfds/recvfds and the resource
sharer, on the stdlib and on cmp side by side."""
import os
import socket

import pytest

import cmp
from cmp import reduction, resource_sharer
from support import assert_same, run

START_METHODS = ['fork', 'spawn', 'forkserver']

# Everything a running child can be sent, over every kind of carrier.
TRAVELLERS = '''
    import importlib, os, socket
    reduction = importlib.import_module(mp.__name__ + '.reduction')

    def _same(x):
        return x

    class Holder:
        """An object owning a descriptor, pickled with DupFd."""
        def __init__(self, fd):
            self.fd = fd
        def __reduce__(self):
            return _same, (reduction.DupFd(self.fd),)

    def worker(q, out):
        conn = q.get()                      # a duplex Connection, over a Queue
        conn.send('via queue: hello')
        conn.close()
        r = q.get()                         # a simplex read end, over a Queue
        out.put(r.recv())
        s = q.get()                         # a socket
        s.sendall(b'socket ok')
        s.close()
        fd = q.get().detach()               # a bare descriptor
        os.write(fd, b'fd ok')
        os.close(fd)

    def handles(conn):
        for i in range(2):
            fd = reduction.recv_handle(conn)
            os.write(fd, b'handle %d;' % i)
            os.close(fd)
        conn.send('done')

    if __name__ == '__main__':
        q, out = mp.Queue(), mp.Queue()
        p = mp.Process(target=worker, args=(q, out))
        p.start()
        a, b = mp.Pipe()
        q.put(b)
        print(a.recv())
        b.close()       # not before: the stdlib pickles in its feeder thread
        r, w = mp.Pipe(duplex=False)
        q.put(r)
        w.send('simplex end travelled')
        print(out.get())
        r.close()
        s1, s2 = socket.socketpair()
        q.put(s2)
        print(s1.recv(100))
        s2.close()
        pr, pw = os.pipe()
        q.put(Holder(pw))
        p.join()
        os.close(pw)
        print(os.read(pr, 100))
        os.close(pr)
        print('exit', p.exitcode)

        c1, c2 = mp.Pipe()
        p = mp.Process(target=handles, args=(c2,))
        p.start()
        pr, pw = os.pipe()
        reduction.send_handle(c1, pw, p.pid)
        reduction.send_handle(c1, pw, p.pid)
        os.close(pw)
        print(c1.recv())
        p.join()
        print(os.read(pr, 100))
        print('exit', p.exitcode)
'''


@pytest.mark.parametrize('method', START_METHODS)
def test_descriptors_travel_to_a_running_process(method):
    std, mine = assert_same(TRAVELLERS, start_method=method, timeout=90)
    assert 'handle 0;handle 1;' in mine.stdout
    assert mine.stdout.count('exit 0') == 2


def test_connection_over_af_inet():
    # The child imports Listener/Client from the implementation under test.
    assert_same('''
        import importlib
        connection = importlib.import_module(mp.__name__ + '.connection')
        def child(address):
            with connection.Client(address) as c:
                conn = c.recv()
                conn.send('through AF_INET')
        if __name__ == '__main__':
            with connection.Listener(('localhost', 0)) as l:
                p = mp.Process(target=child, args=(l.address,))
                p.start()
                with l.accept() as server:
                    a, b = mp.Pipe()
                    server.send(b)
                    print(a.recv())
            p.join()
            print(p.exitcode)
    ''', timeout=60)


@pytest.mark.parametrize('method', START_METHODS)
def test_send_handle_over_any_connection(method):
    # cmp sends the descriptor inside a message, so a simplex Pipe and an
    # AF_INET connection carry it too (the stdlib's raw form needs a Unix
    # socket: on a pipe it fails with OSError ENOTSOCK).
    r = run('''
        import os
        from cmp import reduction
        def child(r, done):
            for i in range(2):
                fd = reduction.recv_handle(r)
                os.write(fd, b'%d;' % i)
                os.close(fd)
            done.send('done')
        if __name__ == '__main__':
            r, w = mp.Pipe(duplex=False)
            done, theirs = mp.Pipe()
            p = mp.Process(target=child, args=(r, theirs))
            p.start()
            pr, pw = os.pipe()
            reduction.send_handle(w, pw, p.pid)
            w.send('not a handle')
            p.join()
            os.close(pw)
            print(os.read(pr, 10), done.poll(), p.exitcode)
    ''', start_method=method, timeout=60)
    assert not r.timed_out, r.stderr
    assert 'RuntimeError: expected a handle from send_handle(), got str' in r.stderr
    assert r.stdout == "b'0;' False 1\n", r.stdout + r.stderr


def test_sendfds_recvfds_on_a_socket():
    s1, s2 = socket.socketpair()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        reduction.sendfds(s1, [w1, w2])
        got = reduction.recvfds(s2, 2)
        assert len(got) == 2
        for fd, r in zip(got, (r1, r2)):
            os.write(fd, b'x')
            os.close(fd)
            assert os.read(r, 1) == b'x'
        s1.close()
        with pytest.raises(EOFError):
            reduction.recvfds(s2, 1)
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)
        s1.close()
        s2.close()


def test_recvfds_of_descriptors_without_their_byte():
    # A message with descriptors but no data byte is the stdlib's "Invalid
    # data received", not an IndexError.
    assert_same('''
        import array, importlib, os, socket
        reduction = importlib.import_module(mp.__name__ + '.reduction')
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        r, w = os.pipe()
        a.sendmsg([b''], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [r]))])
        try:
            reduction.recvfds(b, 1)
        except Exception as e:
            print(type(e).__name__, e)
    ''')


def test_send_handle_on_a_raw_socket():
    # Objects that are not cmp Connections get the stdlib's raw form.
    s1, s2 = socket.socketpair()
    r, w = os.pipe()
    try:
        reduction.send_handle(s1, w, os.getpid())
        fd = reduction.recv_handle(s2)
        os.write(fd, b'raw')
        os.close(fd)
        assert os.read(r, 3) == b'raw'
    finally:
        for x in (s1, s2):
            x.close()
        os.close(r)
        os.close(w)


def _open_fds():
    """{fd: what it refers to}, but the directory this listing reads (its
    number is the lowest free one, which need not be the same each time)."""
    fds = {}
    for fd in os.listdir('/proc/self/fd'):
        try:
            fds[fd] = os.readlink('/proc/self/fd/' + fd)
        except OSError:
            pass                # (the listing's own, closed by now)
    return fds


def test_sharer_keeps_nothing_once_claimed_and_stop_closes_the_rest():
    import pickle
    before = _open_fds()
    a, b = cmp.Pipe()
    for _ in range(3):
        c = pickle.loads(pickle.dumps(a))
        b.send('ping')
        assert c.recv() == 'ping'
        c.close()
    sharer = resource_sharer._resource_sharer
    assert sharer._cache == {}
    unclaimed = pickle.dumps(resource_sharer.DupFd(b.fileno()))
    assert len(sharer._cache) == 1
    resource_sharer.stop(timeout=10)
    assert sharer._cache == {} and sharer._thread is None
    a.close()
    b.close()
    after = _open_fds()
    assert {fd: what for fd, what in after.items() if before.get(fd) != what} == {}
    with pytest.raises(OSError):
        pickle.loads(unclaimed).detach()     # nobody serves it any more


def test_sharer_restarts_after_stop():
    import pickle
    r, w = os.pipe()
    try:
        resource_sharer.stop()
        df = pickle.loads(pickle.dumps(resource_sharer.DupFd(w)))
        fd = df.detach()
        os.write(fd, b'again')
        os.close(fd)
        assert os.read(r, 5) == b'again'
    finally:
        os.close(r)
        os.close(w)
        resource_sharer.stop()


def test_a_forked_child_lends_through_its_own_sharer():
    # The parent's sharer thread does not exist in a forked child: the
    # child's loans go through a sharer of its own.
    r = run('''
        import os, pickle
        from cmp import resource_sharer
        def child(q, w):
            q.put(resource_sharer.DupFd(w))   # lent by the child's sharer
            q.join()                          # stay alive until it is claimed
        if __name__ == '__main__':
            pr, pw = os.pipe()
            warm = pickle.loads(pickle.dumps(resource_sharer.DupFd(pw)))
            os.close(warm.detach())           # the parent's sharer runs
            q = mp.JoinableQueue()
            p = mp.Process(target=child, args=(q, pw))
            p.start()
            fd = q.get().detach()
            q.task_done()
            os.write(fd, b'from the child')
            os.close(fd)
            os.close(pw)
            p.join()
            print(os.read(pr, 100), p.exitcode)
    ''', start_method='fork', timeout=60)
    assert not r.timed_out, r.stderr
    assert r.stdout == "b'from the child' 0\n", r.stdout + r.stderr


def test_dupfd_while_spawning_uses_the_popens_own_wrapper():
    # loky's Popen (set with set_spawning_popen) brings DupFd and
    # duplicate_for_child of its own, as the stdlib's Popen classes do.
    from cmp import context

    class ForeignPopen:
        class DupFd:
            def __init__(self, fd):
                self.fd = fd

        def duplicate_for_child(self, fd):
            return fd + 1000

    context.set_spawning_popen(ForeignPopen())
    try:
        df = reduction.DupFd(5)
    finally:
        context.set_spawning_popen(None)
    assert isinstance(df, ForeignPopen.DupFd) and df.fd == 1005


def test_recv_handle_of_bytes_without_a_descriptor():
    # CPython's test_missing_fd_transfer: a byte written to the connection's
    # descriptor itself; then a peer that closed without sending.
    assert_same('''
        import os
        reduction = __import__(mp.__name__ + '.reduction', fromlist=['x'])
        a, b = mp.Pipe()
        os.write(b.fileno(), b'\\0')
        print(a.poll(5))
        try:
            reduction.recv_handle(a)
        except RuntimeError as e:
            print('RuntimeError', e)
        a, b = mp.Pipe()
        b.close()
        try:
            reduction.recv_handle(a)
        except EOFError:
            print('EOFError')
    ''')
