"""Queue, JoinableQueue, SimpleQueue: differential against the stdlib, plus
what only cmp does (put_many/get_many, recovery from killed processes).

CMP_STRESS_FULL=1 runs the stress test at the issue's full size
(8 producers x 8 consumers, 1M messages up to several MiB)."""
import os
import signal
import time

import pytest

from support import assert_same, run

START_METHODS = ('fork', 'spawn', 'forkserver')


def norm(text):
    return text.replace('multiprocessing.queues', 'Q').replace('cmp.queues', 'Q')


def same(code, **kw):
    import support
    return assert_same(code, normalize_output=lambda t: norm(support.normalize(t)), **kw)


def test_basic_methods_and_exceptions():
    same('''
    import queue
    q = mp.Queue(3)
    print(q._maxsize, mp.Queue()._maxsize, mp.Queue(-5)._maxsize)
    import time
    for x in (1, 'two', b'three'):
        q.put(x)
    time.sleep(0.2)     # the stdlib's feeder thread: empty() is True until it ran
    print(q.qsize(), q.full(), q.empty())
    for f in (lambda: q.put_nowait(4), lambda: q.put(4, False),
              lambda: q.put(4, timeout=0.05), lambda: q.put(4, True, -1)):
        try:
            f()
        except queue.Full as e:
            print('Full', repr(str(e)))
    print(q.get(), q.get(block=True), q.get_nowait())
    for f in (q.get_nowait, lambda: q.get(False), lambda: q.get(timeout=0.05),
              lambda: q.get(timeout=-1)):
        try:
            f()
        except queue.Empty as e:
            print('Empty', repr(str(e)))
    print(q.qsize(), q.full(), q.empty())
    try:
        q.join_thread()
    except AssertionError as e:
        print('AssertionError', e)
    q.put(5)
    q.close()
    # (empty() after close: the stdlib's answer depends on its feeder thread's timing)
    for name in ('put', 'get', 'get_nowait', 'put_nowait', 'qsize', 'full',
                 'join_thread', 'cancel_join_thread', 'close'):
        args = (6,) if name.startswith('put') else ()
        try:
            print(name, getattr(q, name)(*args))
        except Exception as e:
            print(name, type(e).__name__, str(e))
    ''')


def test_maxsize_arguments():
    same('''
    for m in (0, -1, 1, 2**31 - 1, 2**31, 2.0, None, '3'):
        try:
            print(m, mp.Queue(m)._maxsize)
        except Exception as e:
            print(m, type(e).__name__, e)
    ''')


def test_timeouts_are_honoured():
    same('''
    import queue, time
    q = mp.Queue(1)
    q.put(1)
    t = time.monotonic()
    try:
        q.put(2, timeout=0.3)
    except queue.Full:
        print('full', 0.25 < time.monotonic() - t < 2)
    q.get()
    t = time.monotonic()
    try:
        q.get(timeout=0.3)
    except queue.Empty:
        print('empty', 0.25 < time.monotonic() - t < 2)
    ''')


def test_joinable_counting():
    same('''
    import threading
    q = mp.JoinableQueue()
    try:
        q.task_done()
    except ValueError as e:
        print('ValueError', e)
    for i in range(3):
        q.put(i)
    def worker():
        for _ in range(3):
            q.get()
            q.task_done()
    def child(q):
        q.join()
        print('child joined', flush=True)
    t = threading.Thread(target=worker)
    t.start()
    q.join()
    t.join()
    print('joined')
    try:
        q.task_done()
    except ValueError as e:
        print('ValueError', e)
    q.put('x')
    p = mp.Process(target=child, args=(q,))
    p.start()
    print(q.get())
    q.task_done()
    p.join()
    print(p.exitcode)
    ''')


def test_simple_queue():
    same('''
    q = mp.SimpleQueue()
    print(q.empty())
    q.put([1, 2])
    q.put(None)
    print(q.empty(), q.get(), q.get(), q.empty())
    q.close()
    for name in ('put', 'get', 'empty', 'close'):
        try:
            print(name, getattr(q, name)(*((1,) if name == 'put' else ())))
        except Exception as e:
            print(name, type(e).__name__, e)
    print(sorted(n for n in dir(q) if not n.startswith('_')
                 and n not in ('put_many', 'get_many')))
    ''')


def test_public_names():
    same('''
    for cls in (mp.Queue, mp.JoinableQueue):
        q = cls()
        print(sorted(n for n in dir(q) if not n.startswith('_')
                     and n not in ('put_many', 'get_many')))
    ''')


def test_pickling_outside_spawning_fails():
    same('''
    import pickle
    for q in (mp.Queue(), mp.JoinableQueue(), mp.SimpleQueue()):
        try:
            pickle.dumps(q)
        except RuntimeError as e:
            print(e)
    ''')


@pytest.mark.parametrize('method', START_METHODS)
def test_shared_with_children(method):
    same('''
    def producer(q, n):
        for i in range(n):
            q.put((i, 'x' * (i % 7)))
    def both(s, j):
        s.put('simple')
        j.put('joinable')
    def consumer(q, out):
        got = []
        while True:
            x = q.get()
            if x is None:
                break
            got.append(x[0])
        out.put(sorted(got))
    if __name__ == '__main__':
        q, out = mp.Queue(), mp.Queue()
        ps = [mp.Process(target=producer, args=(q, 200)) for _ in range(3)]
        cs = [mp.Process(target=consumer, args=(q, out)) for _ in range(2)]
        for p in ps + cs:
            p.start()
        for p in ps:
            p.join()
        q.put(None); q.put(None)
        res = sorted(out.get() + out.get())
        for p in cs:
            p.join()
        print(res == sorted(list(range(200)) * 3))
        s = mp.SimpleQueue()
        j = mp.JoinableQueue()
        p = mp.Process(target=both, args=(s, j))
        p.start()
        print(s.get(), j.get())
        j.task_done()
        j.join()
        p.join()
    ''', start_method=method)


def test_module_level_queue_under_fork():
    same('''
    q = mp.Queue(3)
    def f():
        q.put({'a': 1})
    p = mp.Process(target=f)
    p.start()
    p.join()
    print(q.get())
    ''', start_method='fork')


def test_fifo_per_producer_through_overflow():
    # A small ring: most items go through the overflow and the feeder thread.
    same('''
    def producer(q, k, n):
        for i in range(n):
            q.put((k, i, b'x' * (i % 3000)))
    if __name__ == '__main__':
        q = mp.Queue()
        ps = [mp.Process(target=producer, args=(q, k, 400)) for k in range(3)]
        for p in ps:
            p.start()
        last = {0: -1, 1: -1, 2: -1}
        ok = True
        for _ in range(1200):
            k, i, _b = q.get()
            ok = ok and i == last[k] + 1
            last[k] = i
        for p in ps:
            p.join()
        print(ok, last)
    ''', env={'CMP_QUEUE_RING_SIZE': '16384'})


def test_large_messages_stream_through_a_small_ring():
    r = run('''
    import hashlib, os
    def producer(q, sizes):
        for n in sizes:
            b = os.urandom(n)
            q.put((hashlib.sha1(b).hexdigest(), b))
    if __name__ == '__main__':
        sizes = [0, 1, 8191, 8192, 100_000, 3 << 20, 17]
        for cls in (mp.Queue, mp.SimpleQueue):
            q = cls()
            p = mp.Process(target=producer, args=(q, sizes))
            p.start()
            for n in sizes:
                h, b = q.get()
                assert len(b) == n and hashlib.sha1(b).hexdigest() == h
            p.join()
        # one process alone: put() of a message larger than the ring does not block
        q = mp.Queue(2)
        q.put(b'y' * 1_000_000)
        print(len(q.get()))
        print('ok')
    ''', timeout=60, env={'CMP_QUEUE_RING_SIZE': '16384'})
    assert r.stdout.split() == ['1000000', 'ok'], r.stderr


def test_put_many_get_many():
    r = run('''
    import queue
    q = mp.Queue(5)
    q.put_many([1, 2, 3])
    print(q.get_many(10))
    try:
        q.put_many(range(7), timeout=0.1)
    except queue.Full:
        print('Full', q.qsize())
    print(q.get_many(2), q.get_many(10, block=False))
    try:
        q.get_many(3, timeout=0.05)
    except queue.Empty:
        print('Empty')
    try:
        q.put_many([1, lambda: 0])
    except Exception as e:
        print(type(e).__name__, q.qsize())
    ''')
    assert r.stdout.splitlines() == ['[1, 2, 3]', 'Full 5', '[0, 1] [2, 3, 4]', 'Empty',
                                     'PicklingError 0'], r.stderr


def test_unpicklable_raises_at_put():
    # The stdlib prints the error in its feeder thread and drops the item.
    r = run('''
    import threading
    q = mp.Queue()
    try:
        q.put(threading.Lock())
    except TypeError as e:
        print('TypeError', e)
    q.put('next')
    print(q.qsize(), q.get())
    ''')
    assert r.stdout.splitlines() == [
        "TypeError cannot pickle '_thread.lock' object", '1 next'], r.stderr


def test_unpickling_error_consumes_the_item():
    same('''
    class Bad:
        def __reduce__(self):
            return (int, ('not a number',))
    q = mp.Queue()
    q.put(Bad())
    q.put(7)
    import time; time.sleep(0.2)
    try:
        q.get()
    except ValueError as e:
        print('ValueError')
    print(q.get())
    ''')


def test_scalars_round_trip():
    r = run('''
    vals = [None, True, False, 0, 255, 256, 65535, 65536, -1, -2**31, 2**31 - 1, 2**31,
            2**63 - 1, -2**63, 2**63, 2**100, 1.5, -0.0, float('inf'), b'', b'a' * 255,
            b'a' * 256, '', 'h\\u00e9', 'x' * 300, '\\ud800', (1, 'a'), bytearray(b'z')]
    class I(int):
        pass
    vals.append(I(3))
    q = mp.Queue()
    for v in vals:
        q.put(v)
    out = [q.get() for _ in vals]
    print(all(type(a) is type(b) and repr(a) == repr(b) for a, b in zip(vals, out)))
    q.put_many(vals)
    print(repr(q.get_many(100)) == repr(vals))
    ''')
    assert r.stdout.split() == ['True', 'True'], r.stderr


def test_ctrl_c_interrupts_a_blocked_get_and_put():
    r = run('''
    import os, signal, threading, queue
    q = mp.Queue(1)
    def interrupt():
        os.kill(os.getpid(), signal.SIGINT)
    for i, op in enumerate((q.get, lambda: q.put(2))):
        threading.Timer(0.3, interrupt).start()
        try:
            op()
        except KeyboardInterrupt:
            print('interrupted')
        if i == 0:
            q.put(1)
    print(q.get(timeout=1))
    q.put('still works')
    print(q.get())
    ''', timeout=30)
    assert r.stdout.splitlines() == ['interrupted', 'interrupted', '1', 'still works'], r.stderr


def test_killed_consumer_leaves_queue_working():
    r = run('''
    import os, signal, time
    def consumer(q):
        while True:
            q.get()
    def big_consumer(q):
        q.get()
    if __name__ == '__main__':
        q = mp.Queue()
        for round in range(5):
            p = mp.Process(target=consumer, args=(q,))
            p.start()
            for i in range(3000):
                q.put(i)
            p.kill()
            p.join()
        # a consumer killed in the middle of a message larger than the ring
        p = mp.Process(target=big_consumer, args=(q,))
        while not q.empty():
            q.get()
        p.start()
        q.put(b'x' * (8 << 20))
        time.sleep(0.2)
        p.kill()
        p.join()
        q.put('after')
        deadline = time.monotonic() + 20
        while True:
            x = q.get(timeout=20)
            if x == 'after':
                break
        print('ok')
    ''', timeout=60, env={'CMP_QUEUE_RING_SIZE': '16384'})
    assert r.stdout.split() == ['ok'], r.stderr


def test_killed_producer_mid_stream_leaves_queue_working():
    r = run('''
    import time
    def producer(q):
        q.put(b'x' * (64 << 20))
    if __name__ == '__main__':
        q = mp.SimpleQueue()
        p = mp.Process(target=producer, args=(q,))
        p.start()
        time.sleep(0.3)   # the producer holds the put lock, streaming, no reader
        p.kill()
        p.join()
        # the ring is full of the dead producer's chunks: a reader drains them
        import threading
        t = threading.Thread(target=q.put, args=('after',))
        t.start()
        print(q.get())
        t.join()
    ''', timeout=60, env={'CMP_QUEUE_RING_SIZE': '16384'})
    assert r.stdout.split() == ['after'], r.stderr


def test_cancel_join_thread_lets_exit_proceed():
    # Items stuck in the overflow (nobody reads): exit waits unless cancelled.
    r = run('''
    def child(q, cancel):
        if cancel:
            q.cancel_join_thread()
        for i in range(100):
            q.put(b'x' * 10000)
    if __name__ == '__main__':
        q = mp.Queue()
        p = mp.Process(target=child, args=(q, True))
        p.start()
        p.join(20)
        print(p.exitcode)
        p = mp.Process(target=child, args=(q, False))
        p.start()
        p.join(1)
        print(p.exitcode)
        while p.exitcode is None:
            q.get()
            p.join(0.01)
        print(p.exitcode)
    ''', timeout=60, env={'CMP_QUEUE_RING_SIZE': '16384'})
    assert r.stdout.split() == ['0', 'None', '0'], r.stderr


def test_many_queues_fit():
    r = run('''
    qs = [mp.Queue() for _ in range(1000)]
    for i, q in enumerate(qs):
        q.put(i)
    print(sum(q.get() for q in qs))
    ''', timeout=60)
    assert r.stdout.split() == [str(sum(range(1000)))], r.stderr


def _stress_code(producers, consumers, messages, max_size, big_share):
    # sizes: half 0..63 bytes, half 0..4095, and a share up to max_size
    return '''
    import random, zlib
    P, C, N, MAX, BIG = %d, %d, %d, %d, %r
    def producer(q, k):
        rnd = random.Random(k)
        for i in range(k, N, P):
            r = rnd.random()
            n = rnd.randrange(MAX + 1 if r < BIG else 64 if r < 0.5 else 4096)
            b = rnd.randbytes(n)
            q.put((i, zlib.crc32(b), b))
    def consumer(q, out):
        seen, total = [], 0
        while True:
            x = q.get()
            if x is None:
                break
            i, crc, b = x
            assert zlib.crc32(b) == crc, i
            seen.append(i)
        out.put(seen)
    if __name__ == '__main__':
        q, out = mp.Queue(), mp.Queue()
        ps = [mp.Process(target=producer, args=(q, k)) for k in range(P)]
        cs = [mp.Process(target=consumer, args=(q, out)) for _ in range(C)]
        for p in ps + cs:
            p.start()
        for p in ps:
            p.join()
        for _ in cs:
            q.put(None)
        seen = []
        for _ in cs:
            seen += out.get()
        for p in cs:
            p.join()
        print(len(seen) == N, sorted(seen) == list(range(N)),
              all(p.exitcode == 0 for p in ps + cs))
    ''' % (producers, consumers, messages, max_size, big_share)


def test_stress_exactly_once():
    if os.environ.get('CMP_STRESS_FULL'):
        code, timeout = _stress_code(8, 8, 1_000_000, 4 << 20, 0.001), 3600
    else:
        code, timeout = _stress_code(4, 4, 20_000, 1 << 20, 0.01), 120
    r = run(code, timeout=timeout)
    assert r.stdout.split() == ['True', 'True', 'True'], r.stderr[-3000:]


def test_empty_on_a_closed_queue_as_the_stdlib():
    # CPython's test_closed_queue_empty_exceptions: close() closes the pipe
    # only in a process that put into the queue; a forked child that did not
    # put answers too.
    assert_same('''
        import os
        def empty(q):
            try:
                return q.empty()
            except OSError as e:
                return str(e)
        for Q in mp.Queue, mp.JoinableQueue:
            q = Q()
            q.close()
            q.join_thread()
            print(empty(q))
            q = Q()
            q.put('foo')
            q.close()
            q.join_thread()
            print(empty(q))
        q = mp.Queue()
        q.put('foo')
        r, w = os.pipe()
        if os.fork() == 0:
            q.close()
            os.write(w, type(empty(q)).__name__.encode())   # the stdlib's races its feeder
            os._exit(0)
        os.wait()
        print(os.read(r, 100).decode())
        q.close()
        q.join_thread()
        print(empty(q))
    ''')


def test_terminate_broken_on_a_queue_with_its_own_feeder():
    # concurrent.futures (3.12+) closes a broken call queue with
    # _terminate_broken(); a subclass that runs the stdlib's feeder thread
    # (loky's design: it overrides _start_thread) gets it too.
    pytest.importorskip('multiprocessing.queues')
    import multiprocessing.queues
    if not hasattr(multiprocessing.queues.Queue, '_terminate_broken'):
        pytest.skip('Queue._terminate_broken() is 3.12+')
    same('''
        import importlib, pickle, threading, weakref
        queues = importlib.import_module(mp.__name__ + '.queues')
        util = importlib.import_module(mp.__name__ + '.util')

        class Own(queues.Queue):
            def _start_thread(self):
                self._buffer.clear()
                self._thread = threading.Thread(
                    target=Own._feed, daemon=True,
                    args=(self._buffer, self._notempty, self._send_bytes, self._wlock))
                self._thread.start()
                self._jointhread = util.Finalize(self._thread, queues.Queue._finalize_join,
                                                 [weakref.ref(self._thread)], exitpriority=-5)
                self._close = util.Finalize(self, queues.Queue._finalize_close,
                                            [self._buffer, self._notempty], exitpriority=10)

            @staticmethod
            def _feed(buffer, notempty, send_bytes, wlock):
                while True:
                    with notempty:
                        if not buffer:
                            notempty.wait()
                    while buffer:
                        obj = buffer.popleft()
                        if obj is queues._sentinel:
                            return
                        try:
                            with wlock:
                                send_bytes(pickle.dumps(obj))
                        except OSError:     # the stdlib's: its reader is closed
                            return

        q = Own(ctx=mp.get_context())
        q.put(1)
        print(q.get(timeout=10))
        q.put(2)
        q._terminate_broken()
        try:
            q.put(3)
        except ValueError:
            print('closed')
    ''')
