"""Pipe() on its shared-memory channel (src/core/chan.h): the behaviours a
ring transport could get wrong, each run on the stdlib and on cmp and
compared -- readiness seen by select() and asyncio, large and concurrent
messages, peers that close or die, descriptors passed through a Pipe."""
import textwrap

import pytest

from support import assert_same, run, run_both


def same(code, **kw):
    return assert_same(textwrap.dedent(code), **kw)


def test_select_on_fileno_is_exact():
    # Once fileno() is asked for, the descriptor is readable exactly when a
    # message is there: select(), selectors and asyncio see what poll() sees.
    same('''
        import select
        if __name__ == '__main__':
            for duplex in (True, False):
                a, b = mp.Pipe(duplex)
                rd, wr = (b, a) if duplex else (a, b)
                fd = rd.fileno()
                def ready():
                    return select.select([fd], [], [], 0)[0] == [fd]
                print('empty', ready(), rd.poll())
                wr.send('x')
                print('one', ready(), rd.poll())
                print(rd.recv(), ready())
                for i in range(3):
                    wr.send(i)
                got = []
                while ready():
                    got.append(rd.recv())
                print('drained', got, ready(), rd.poll())
    ''')


def test_asyncio_add_reader():
    same('''
        import asyncio
        def child(c):
            for i in range(5):
                c.send(i)
            c.close()
        async def main(conn):
            loop = asyncio.get_running_loop()
            q = asyncio.Queue()
            def on_readable():
                try:
                    q.put_nowait(conn.recv())
                except EOFError:
                    loop.remove_reader(conn.fileno())
                    q.put_nowait(None)
            loop.add_reader(conn.fileno(), on_readable)
            got = []
            while (x := await asyncio.wait_for(q.get(), 10)) is not None:
                got.append(x)
            return got
        if __name__ == '__main__':
            a, b = mp.Pipe()
            p = mp.Process(target=child, args=(b,)); p.start(); b.close()
            print(asyncio.run(main(a)))
            p.join()
    ''')


def test_large_and_mixed_messages_both_ways():
    # Up to what a socket would buffer goes out without a reader; larger
    # messages stream through while the child reads.
    same('''
        import hashlib
        def echo(c):
            while True:
                m = c.recv_bytes()
                if m == b'end':
                    break
                c.send_bytes(m)
        if __name__ == '__main__':
            a, b = mp.Pipe()
            a.send_bytes(b'z' * 150000)
            print('buffered', len(b.recv_bytes()))
            p = mp.Process(target=echo, args=(b,)); p.start()
            for n in (0, 1, 7, 8191, 8192, 65536, 1 << 20, 3 << 20, 5):
                m = bytes(range(256)) * (n // 256) + b'q' * (n % 256)
                a.send_bytes(m)
                r = a.recv_bytes()
                print(n, len(r), hashlib.md5(r).hexdigest() == hashlib.md5(m).hexdigest())
            buf = bytearray(10)
            a.send_bytes(b'0123456789abc')
            try:
                a.recv_bytes_into(buf)
            except mp.BufferTooShort as e:
                print('too short', e.args[0])
            a.send_bytes(b'abc')
            print('into', a.recv_bytes_into(buf, 2), bytes(buf))
            a.send_bytes(b'x' * 100)
            try:
                a.recv_bytes(10)
            except OSError as e:
                print('maxlength', e)
            a.send_bytes(b'end')
            p.join()
    ''')


def test_many_unlocked_senders():
    # Several processes send small messages on one shared end without a
    # lock: each arrives whole (as the kernel's atomic writes give).
    same('''
        def sender(c, k):
            for i in range(2000):
                c.send((k, i, 'x' * (i % 50)))
        if __name__ == '__main__':
            a, b = mp.Pipe()
            ps = [mp.Process(target=sender, args=(b, k)) for k in range(4)]
            for p in ps:
                p.start()
            got = [a.recv() for _ in range(8000)]
            for p in ps:
                p.join()
            ok = all(len(m[2]) == m[1] % 50 for m in got)
            per = {}
            for k, i, _ in got:
                per.setdefault(k, []).append(i)
            print(ok, sorted(per), all(v == list(range(2000)) for v in per.values()))
    ''', timeout=120)


def test_peer_closed_or_killed():
    same('''
        import os, signal, time
        def hold(c, ready):
            ready.send('up')
            time.sleep(60)
        def close_then_say(c, say):
            c.close()
            say.send('closed')
        if __name__ == '__main__':
            # the reader is gone: send raises BrokenPipeError
            a, b = mp.Pipe()
            b.close()
            try:
                a.send(1)
            except BrokenPipeError:
                print('send to closed: BrokenPipeError')
            # the writer is gone: recv raises EOFError, poll says True
            a, b = mp.Pipe()
            b.send('last')
            b.close()
            print(a.poll(), a.recv(), a.poll(1))
            try:
                a.recv()
            except EOFError:
                print('EOFError')
            # the peer closes in another process, then says so elsewhere
            a, b = mp.Pipe()
            say_r, say_w = mp.Pipe(False)
            p = mp.Process(target=close_then_say, args=(b, say_w)); p.start()
            b.close()
            print(say_r.recv())
            p.join()
            try:
                a.send('x')
            except BrokenPipeError:
                print('BrokenPipeError after a close elsewhere')
            # a child holding the other end is killed while we wait
            a, b = mp.Pipe()
            r, w = mp.Pipe(False)
            p = mp.Process(target=hold, args=(b, w)); p.start()
            b.close(); w.close()
            print(r.recv())
            os.kill(p.pid, signal.SIGKILL)
            t0 = time.monotonic()
            try:
                a.recv()
            except EOFError:
                print('EOFError on kill', time.monotonic() - t0 < 5)
            p.join()
            # a writer blocked on a full pipe whose reader is killed
            a, b = mp.Pipe()
            r, w = mp.Pipe(False)
            p = mp.Process(target=hold, args=(b, w)); p.start()
            b.close(); w.close()
            print(r.recv())
            def kill_later():
                time.sleep(0.5)
                os.kill(p.pid, signal.SIGKILL)
            import threading
            threading.Thread(target=kill_later).start()
            try:
                for _ in range(1000):
                    a.send_bytes(bytes(1 << 16))
                print('never blocked')
            except BrokenPipeError:
                print('BrokenPipeError once the reader died')
            p.join()
    ''', timeout=120)


def test_connections_passed_through_a_pipe():
    # A running child gets Connections (a Pipe end, a socket one) through a
    # Pipe, and talks on them.
    same('''
        import socket
        def child(c):
            while True:
                conn = c.recv()
                if conn is None:
                    break
                conn.send(('child got', conn.recv()))
                conn.close()
        if __name__ == '__main__':
            a, b = mp.Pipe()
            p = mp.Process(target=child, args=(b,)); p.start()
            for k in range(3):
                x, y = mp.Pipe()
                a.send(y)
                y.close()
                x.send(k)
                print(x.recv())
            s1, s2 = socket.socketpair()
            x = mp.connection.Connection(s1.detach())
            a.send(mp.connection.Connection(s2.detach()))
            x.send('over a socket')
            print(x.recv())
            a.send(None)
            p.join()
            print('exit', p.exitcode)
    ''', timeout=120)


@pytest.mark.parametrize('method', ['spawn', 'forkserver'])
def test_pipe_ends_go_to_spawned_children(method):
    same('''
        def child(c, r):
            c.send(('hello', r.recv()))
        if __name__ == '__main__':
            a, b = mp.Pipe()
            r, w = mp.Pipe(False)
            p = mp.Process(target=child, args=(b, r)); p.start()
            w.send('simplex')
            print(a.recv())
            p.join()
            print(p.exitcode)
    ''', start_method=method, timeout=120)


def test_ctrl_c_while_receiving_a_streamed_message_keeps_it():
    # Interrupted in the middle of a message that streams through the ring,
    # the next receive completes it (cmp only: the stdlib loses it).
    r = run('''
        import os, signal, threading, time
        import cmp
        def slow_sender(c):
            m = bytes(range(256)) * (16 << 12)      # 16 MiB, sent while we are interrupted
            c.send_bytes(m)
            c.send_bytes(b'next')
        if __name__ == '__main__':
            a, b = cmp.Pipe()
            threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            p = cmp.Process(target=slow_sender, args=(b,)); p.start()
            time.sleep(0.3)
            got = None
            while got is None:
                try:
                    got = a.recv_bytes()
                except KeyboardInterrupt:
                    print('interrupted')
            print(len(got), got == bytes(range(256)) * (16 << 12), a.recv_bytes())
            p.join()
    ''', 'cmp', timeout=60)
    assert not r.timed_out, r.stderr
    assert r.returncode == 0, r.stderr
    assert r.stdout.split('\n')[-2] == "16777216 True b'next'", r.stdout


def test_many_pipes_under_a_low_descriptor_limit():
    # A channel costs a third descriptor only while descriptors are
    # plentiful: under a low limit, cmp makes nearly as many Pipes as the
    # stdlib (then the same EMFILE), and every one of them works.
    code = '''
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        ps = []
        try:
            while True:
                ps.append(mp.Pipe())
        except OSError as e:
            print(len(ps), e.errno)
        print(all(a.send(i) or b.recv() == i for i, (a, b) in enumerate(ps)))
    '''
    std, mine = run_both(textwrap.dedent(code), timeout=60)
    n_std, err_std = map(int, std.stdout.split()[:2])
    n_cmp, err_cmp = map(int, mine.stdout.split()[:2])
    assert err_std == err_cmp == 24, (std.stdout, mine.stdout, mine.stderr)
    assert n_cmp >= 0.85 * n_std, (n_std, n_cmp)
    assert std.stdout.split()[-1] == mine.stdout.split()[-1] == 'True', mine.stderr


def test_send_of_a_connection_interrupted_while_the_pipe_is_full():
    # Ctrl-C withdraws the message; its descriptor record, already sent, is
    # dropped later as an orphan, and the pipe goes on (cmp only).
    r = run('''
        import os, signal, threading, time
        import cmp
        a, b = cmp.Pipe()
        x, y = cmp.Pipe()
        sizes = [100 << 10, 100 << 10, (256 << 10) - 2 * ((100 << 10) + 8) - 8]
        for size in sizes:                         # fill the 256 KiB ring to b exactly
            a.send_bytes(bytes(size))
        n = len(sizes)
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            a.send(y)                              # blocks: the ring is full
        except KeyboardInterrupt:
            print('interrupted')
        for _ in range(n):
            b.recv_bytes()
        print('poll empty', b.poll(0.1))
        a.send('after')
        print(b.recv())
        t0 = time.monotonic()
        print('poll after orphan', b.poll(2), time.monotonic() - t0 > 1)
        a.close()
        try:
            b.recv()
        except EOFError:
            print('EOFError')
    ''', 'cmp', timeout=60)
    assert not r.timed_out, r.stderr
    assert r.stdout.split('\n')[:-1] == [
        'interrupted', 'poll empty False', 'after', 'poll after orphan False True',
        'EOFError'], (r.stdout, r.stderr)
