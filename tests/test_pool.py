"""Pool, ThreadPool, cmp.dummy: differential against the stdlib, plus what
only cmp does (workers that die mid-task fail their task and are replaced;
imap reads an endless iterable lazily; nothing leaks)."""
import pytest

from support import assert_same, run
import support

START_METHODS = ('fork', 'spawn', 'forkserver')


def norm(text):
    return (support.normalize(text).replace('multiprocessing.pool', 'P')
            .replace('cmp.pool', 'P'))


def same(code, **kw):
    return assert_same(code, normalize_output=norm, **kw)


# Functions the snippets send to workers (module level: spawn re-imports).
FUNCS = '''
import os, sys, time, signal, threading

def sq(x):
    return x * x

def add(a, b=0, *, c=0):
    return a + b + c

def boom(x):
    raise ValueError('bad %s' % x)

def boom_at(x):
    if x == 3:
        raise KeyError(x)
    return x

def unpicklable(x):
    return lambda: x

def slow(x):
    time.sleep(x)
    return x

def pid(x):
    return os.getpid()

def get_state(x):
    return STATE

STATE = 'unset'

def init(value):
    global STATE
    STATE = value

# Output is kept until the pools are gone: a worker forked (by the pool's
# thread) while the main thread prints would inherit, and print again, what
# is still in the stdout buffer -- the stdlib's race as well.
OUT = []

def say(*args, end=None):
    OUT.append(' '.join(map(str, args)))

def show():
    print('\\n'.join(OUT))
'''


def test_api_against_the_stdlib():
    same(FUNCS + '''
if __name__ == '__main__':
    import itertools
    with mp.Pool(2) as p:
        print(p.apply(sq, (7,)), p.apply(add, (1, 2), {'c': 3}), p.apply(add, [1]))
        print(p.map(sq, range(10)), p.map(sq, []), p.map(sq, iter(range(5))))
        for cs in (None, 1, 3, 100):
            print(cs, p.map(sq, range(13), cs), p.map(sq, list(range(7)), cs),
                  p.map(sq, tuple(range(5)), cs))
        print(p.map(sq, range(3), 0))       # the stdlib's quirk: [None, None, None]
        print(p.starmap(add, [(1, 2), (3, 4)]), p.starmap(add, iter([[5, 6]]), 1))
        print(p.starmap_async(add, [(1, 1)] * 3).get())
        print(p.map_async(sq, range(4)).get(timeout=30))
        print(list(p.imap(sq, range(8))), list(p.imap(sq, range(8), chunksize=3)))
        print(sorted(p.imap_unordered(sq, range(8))),
              sorted(p.imap_unordered(sq, range(8), 3)))
        print(list(p.imap(sq, [])), list(p.imap(sq, (x for x in range(4)))))
        it = p.imap(sq, range(3))
        print(it is iter(it), it.next(timeout=30), next(it), it.next(), end=' ')
        try:
            next(it)
        except StopIteration:
            print('StopIteration')
        for bad in (0, -1):
            try:
                p.imap(sq, range(3), bad)
            except ValueError as e:
                print('ValueError', e)
        print(list(p.imap(sq, range(5), chunksize=2)).__class__.__name__,
              type(p.imap(sq, range(5), chunksize=2)).__name__,
              type(p.imap(sq, range(5))).__name__,
              type(p.imap_unordered(sq, range(5))).__name__)
        r = p.apply_async(slow, (0.5,))
        print(r.ready())
        try:
            r.successful()
        except ValueError:
            print('ValueError not ready')
        try:
            r.get(timeout=0.01)
        except mp.TimeoutError as e:
            print('TimeoutError', repr(str(e)))
        print(r.wait(0.01), r.ready())
        r.wait()
        print(r.ready(), r.successful(), r.get())
        print(type(r).__name__, type(p.map_async(sq, [1])).__name__)
        it = p.imap(slow, [0.5])
        try:
            it.next(timeout=0.01)
        except mp.TimeoutError as e:
            print('imap TimeoutError', repr(str(e)))
        print(it.next())
    print(p._state)
''')


def test_exceptions_against_the_stdlib():
    same(FUNCS + '''
if __name__ == '__main__':
    import pickle
    from importlib import import_module
    P = import_module(mp.__name__ + '.pool')
    with mp.Pool(2) as p:
        for f in (lambda: p.apply(boom, (1,)), lambda: p.map(boom, [0]),
                  lambda: p.map(boom_at, range(6), 2), lambda: list(p.imap(boom, [5])),
                  lambda: p.starmap(boom, [(1,)])):
            try:
                f()
            except ValueError as e:
                print('ValueError', e.args, type(e.__cause__).__name__,
                      'boom' in str(e.__cause__), "raise ValueError('bad %s' % x)" in
                      str(e.__cause__))
            except KeyError as e:
                print('KeyError', e.args, type(e.__cause__).__name__)
        r = p.apply_async(boom, (2,))
        r.wait()
        print(r.ready(), r.successful())
        it = p.imap(boom_at, range(6))
        out = []
        for _ in range(6):
            try:
                out.append(next(it))
            except KeyError as e:
                out.append('KeyError%s' % e)
        print(out)
        try:
            p.apply(unpicklable, (1,))
        except P.MaybeEncodingError as e:
            print(type(e).__name__, str(e).split(' at ')[0], len(e.args), e.exc[:20])
        try:
            p.map(unpicklable, [1, 2])
        except Exception as e:
            print(type(e).__name__, str(e).split(' at ')[0])
        for f in (lambda: p.apply(lambda: 1), lambda: p.map(lambda x: x, [1]),
                  lambda: p.apply(sq, (threading.Lock(),))):
            try:
                f()
            except Exception as e:
                print(type(e).__name__)
        print(p.apply(sq, (3,)))
        try:
            pickle.dumps(p)
        except NotImplementedError as e:
            print('NotImplementedError', e)
        try:
            p.join()
        except ValueError as e:
            print('ValueError', e)
        def gen():
            yield 1
            yield 2
            raise OSError('gen')
        try:
            p.map(sq, gen())
        except OSError as e:
            print('OSError', e)
        it = p.imap(sq, gen())
        print(next(it), next(it), end=' ')
        try:
            next(it)
        except OSError as e:
            print('OSError', e)
    for f in (lambda: mp.Pool(0), lambda: mp.Pool(-1), lambda: mp.Pool(1, maxtasksperchild=0),
              lambda: mp.Pool(1, maxtasksperchild=1.5), lambda: mp.Pool(1, initializer=5)):
        try:
            f()
        except (ValueError, TypeError) as e:
            print(type(e).__name__, e)
    p = mp.Pool(1)
    print(repr(p).replace(mp.__name__, 'M'))
    p.close()
    print(repr(p).replace(mp.__name__, 'M'))
    for f in (lambda: p.apply(sq, (1,)), lambda: p.apply_async(sq, (1,)),
              lambda: p.map(sq, [1]), lambda: p.map_async(sq, [1]),
              lambda: p.imap(sq, [1]), lambda: p.imap_unordered(sq, [1]),
              lambda: p.starmap(add, [(1, 2)]), lambda: p.starmap_async(add, [(1, 2)]),
              lambda: p.__enter__()):
        try:
            f()
        except ValueError as e:
            print('ValueError', e)
    p.join()
    p.terminate()
    print(repr(p).replace(mp.__name__, 'M'), p._pool)
    e = P.MaybeEncodingError(TypeError('x'), [1])
    print(str(e), repr(e), e.args)
''')


def test_callbacks_against_the_stdlib():
    same(FUNCS + '''
if __name__ == '__main__':
    got = []
    main = threading.main_thread()
    def cb(v):
        got.append(('cb', v, threading.current_thread() is not main))
    def ecb(e):
        got.append(('ecb', type(e).__name__, threading.current_thread() is not main))
    with mp.Pool(1) as p:
        rs = [p.apply_async(sq, (i,), callback=cb, error_callback=ecb) for i in range(5)]
        rs.append(p.apply_async(boom, (1,), callback=cb, error_callback=ecb))
        rs.append(p.apply_async(sq, (9,)))
        rs.append(p.apply_async(boom, (9,)))
        rs.append(p.map_async(sq, range(4), callback=cb, error_callback=ecb))
        rs.append(p.map_async(boom_at, range(5), 1, callback=cb, error_callback=ecb))
        rs.append(p.starmap_async(add, [(1, 2)], callback=cb, error_callback=ecb))
        rs.append(p.map_async(sq, [], callback=cb))
        for r in rs:
            r.wait()
        print(got)
        print([r.successful() for r in rs])
''')


def test_initializer_and_maxtasksperchild():
    same(FUNCS + '''
if __name__ == '__main__':
    with mp.Pool(2, initializer=init, initargs=('ready',)) as p:
        say(set(p.map(get_state, range(20), 1)))
    with mp.Pool(1, maxtasksperchild=2) as p:
        pids = [p.apply(pid, (i,)) for i in range(6)]
        say(len(set(pids)), [pids[i] == pids[i + 1] for i in range(0, 6, 2)])
        say(len(set(p.map(pid, range(6), 1))))
    with mp.Pool(2, init, ('x',), 1) as p:
        say(p.map(get_state, range(4), 1))
    show()
''')


@pytest.mark.parametrize('method', ['spawn', 'forkserver'])
def test_start_methods(method):
    same(FUNCS + '''
if __name__ == '__main__':
    with mp.Pool(2, initializer=init, initargs=('spawned',)) as p:
        print(p.map(sq, range(10)), p.apply(add, (1, 2)), list(p.imap(sq, range(4))))
        print(p.map(get_state, range(2)))
        try:
            p.apply(boom, (3,))
        except ValueError as e:
            print('ValueError', e, type(e.__cause__).__name__)
        print(p.apply(pid, (0,)) != os.getpid())
    p = mp.Pool(1, maxtasksperchild=1)
    print(p.map(sq, range(3), 1))
    p.close()
    p.join()
    print(mp.active_children())
''', start_method=method)


def test_close_join_finishes_the_work():
    same(FUNCS + '''
if __name__ == '__main__':
    p = mp.Pool(2)
    rs = [p.apply_async(slow, (0.05,)) for _ in range(6)]
    it = p.imap(sq, range(50))
    p.close()
    p.join()
    print([r.get() for r in rs], sum(it), mp.active_children())
    print(threading.active_count())
''')


def test_context_manager_terminates():
    same(FUNCS + '''
if __name__ == '__main__':
    import time
    t = time.monotonic()
    with mp.Pool(2) as p:
        r = p.apply_async(slow, (30,))
        time.sleep(0.2)
    print(p._state, time.monotonic() - t < 20, r.ready())
    ctx = mp.get_context()
    with ctx.Pool(1) as q:
        print(q.apply(sq, (5,)))
    print(mp.active_children())
''')


def test_unclosed_pool_warns():
    std, mine = support.run_both('''
import gc, warnings
warnings.simplefilter('always')
def sq(x):
    return x * x
if __name__ == '__main__':
    p = mp.Pool(2)
    print(p.map(sq, range(3)))
    del p
    gc.collect()
    print(mp.active_children())
''')
    assert std.stdout == mine.stdout == '[0, 1, 4]\n[]\n'
    for r in (std, mine):
        assert 'ResourceWarning: unclosed running multiprocessing pool' in r.stderr, r.stderr
        assert r.returncode == 0


def test_thread_pool_and_dummy():
    same(FUNCS + '''
if __name__ == '__main__':
    from importlib import import_module
    P = import_module(mp.__name__ + '.pool')
    d = import_module(mp.__name__ + '.dummy')
    main = threading.main_thread()
    with P.ThreadPool(3, initializer=init, initargs=('t',)) as p:
        print(p.map(sq, range(10)), p.apply(add, (1,), {'b': 2}), p.starmap(add, [(1, 2)]))
        print(list(p.imap(sq, range(5))), sorted(p.imap_unordered(sq, range(5), 2)))
        print(p.map(lambda x: x + 1, [1, 2]), p.apply(get_state, (0,)))
        try:
            p.apply(boom, (1,))
        except ValueError as e:
            print('ValueError', e, e.__cause__)
        got = []
        p.apply_async(sq, (3,), callback=lambda v: got.append(
            threading.current_thread() is not main)).wait()
        print(got, p.apply(unpicklable, (1,))() )
    print(p._state)
    with d.Pool(2) as p:
        print(type(p).__name__, p.map(sq, range(4)))
    t = d.Process(target=sq, args=(2,))
    print(t.exitcode, end=' ')
    t.start()
    t.join()
    print(t.exitcode, t in d.active_children(), d.current_process() is main)
    a, b = d.Pipe()
    a.send(1)
    print(b.poll(), b.recv(), b.poll(), b.poll(0.01))
    q = d.Queue()
    q.put(1)
    print(q.get(), d.JoinableQueue is d.Queue, d.Manager() is d)
    for name in ('Lock', 'RLock', 'Semaphore', 'BoundedSemaphore', 'Condition', 'Event',
                 'Barrier'):
        print(name, getattr(d, name) is getattr(threading, name), end='; ')
    print()
    v = d.Value('i', 3)
    v.value += 1
    print(v.value, list(d.Array('i', [1, 2])), d.Namespace(a=1, _b=2))
    print(sorted(d.__all__))
''')


def test_pool_and_public_names():
    same('''
from importlib import import_module
P = import_module(mp.__name__ + '.pool')
for name in ('Pool', 'ThreadPool', 'ApplyResult', 'AsyncResult', 'MapResult', 'IMapIterator',
             'IMapUnorderedIterator', 'MaybeEncodingError', 'RemoteTraceback',
             'ExceptionWithTraceback', 'mapstar', 'starmapstar', 'worker', 'RUN', 'CLOSE',
             'TERMINATE', 'INIT'):
    print(name, hasattr(P, name))
print(sorted(P.__all__), P.AsyncResult is P.ApplyResult, P.RUN, P.CLOSE, P.TERMINATE)
print(P.ApplyResult[int], issubclass(P.MapResult, P.ApplyResult))
print(P.mapstar((abs, [-1, -2])), P.starmapstar((pow, [(2, 3)])))
print(mp.Pool.__name__, callable(mp.Pool))
''')


# ---------------------------------------------------------------------------
# What only cmp does: the stdlib's Pool hangs when a worker dies mid-task.

DEATHS = FUNCS + '''
import ctypes

def die(how):
    if how == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == '_exit':
        os._exit(7)
    elif how == 'segv':
        ctypes.string_at(0)
    elif how == 'sysexit':
        sys.exit(3)
    return how

def maybe_die(x, how, at=3):
    if x == at:
        die(how)
    return x

def check(e, how):
    codes = {'kill': 'exit code -9 (SIGKILL)', '_exit': 'exit code 7',
             'segv': 'exit code -11 (SIGSEGV)', 'sysexit': 'exit code 3'}
    assert type(e).__name__ == 'WorkerLostError', repr(e)
    assert isinstance(e, mp.ProcessError)
    msg = str(e)
    assert 'PoolWorker-' in msg and codes[how] in msg and 'pid ' in msg, msg
'''


@pytest.mark.parametrize('how', ['kill', '_exit', 'segv', 'sysexit'])
def test_dead_worker_fails_its_task(how):
    r = run(DEATHS + '''
if __name__ == '__main__':
    import functools
    how = sys.argv[1]
    with mp.Pool(2) as p:
        # apply_async: that task fails; the others and the pool go on
        rs = [p.apply_async(maybe_die, (i, how)) for i in range(8)]
        for i, r in enumerate(rs):
            try:
                say(i, r.get(timeout=30))
            except Exception as e:
                check(e, how)
                say(i, 'lost', r.ready(), r.successful())
        # map: the whole call raises that error
        try:
            p.map(functools.partial(maybe_die, how=how), range(10), 2)
        except Exception as e:
            check(e, how)
            say('map lost')
        # imap: that item raises, the iteration goes on
        it = p.imap(functools.partial(maybe_die, how=how), range(6))
        out = []
        for _ in range(6):
            try:
                out.append(it.next(timeout=30))
            except Exception as e:
                check(e, how)
                out.append('lost')
        say(out)
        say(p.map(sq, range(5)), p.map(pid, range(8), 1).count(os.getpid()))
    say(mp.active_children())
    show()
''', args=(how,), timeout=60)
    assert not r.timed_out, r.stderr
    assert r.returncode == 0, r.stderr
    assert r.stdout == ''.join('%d %s\n' % (i, 'lost True False' if i == 3 else i)
                               for i in range(8)) + (
        'map lost\n'
        "[0, 1, 2, 'lost', 4, 5]\n"
        '[0, 1, 4, 9, 16] 0\n'
        '[]\n'), r.stdout


@pytest.mark.parametrize('method', ['spawn', 'forkserver'])
def test_dead_worker_under_other_start_methods(method):
    r = run(DEATHS + '''
if __name__ == '__main__':
    with mp.Pool(1) as p:
        r = p.apply_async(die, ('kill',))
        try:
            r.get(timeout=30)
        except Exception as e:
            check(e, 'kill')
            print('lost')
        print(p.apply(sq, (4,)), p.map(maybe_die, [(1)], 1, ) if False else p.map(sq, [2]))
''', start_method=method, timeout=60)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == 'lost\n16 [4]\n', r.stdout


def test_dead_worker_with_callbacks_and_maxtasks():
    r = run(DEATHS + '''
if __name__ == '__main__':
    errors = []
    with mp.Pool(1, maxtasksperchild=2) as p:
        rs = [p.apply_async(maybe_die, (i, 'kill'), error_callback=errors.append)
              for i in range(6)]
        say([r.get(timeout=30) if r.successful() else 'lost'
               for r in rs if r.wait(30) or True])
        say([type(e).__name__ for e in errors])
        say(p.map(sq, range(4), 1))
    show()
''', timeout=60)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == "[0, 1, 2, 'lost', 4, 5]\n['WorkerLostError']\n[0, 1, 4, 9]\n", r.stdout


def test_killed_from_outside_while_idle_and_busy():
    r = run(DEATHS + '''
if __name__ == '__main__':
    import time
    with mp.Pool(2) as p:
        p.map(sq, range(4))
        victim = p._pool[0]
        os.kill(victim.pid, signal.SIGKILL)        # idle: just replaced
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                len(p._pool) == 2 and victim.pid not in [w.pid for w in p._pool]):
            time.sleep(0.01)
        say(p.map(sq, range(6)), len(p._pool), victim.pid not in [w.pid for w in p._pool])
        r = p.apply_async(slow, (60,))
        time.sleep(0.5)
        for w in list(p._pool):
            os.kill(w.pid, signal.SIGKILL)
        t = time.monotonic()
        try:
            r.get(timeout=30)
        except Exception as e:
            check(e, 'kill')
            say('lost')
        say(p.apply(sq, (3,)))
    show()
''', timeout=60)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == '[0, 1, 4, 9, 16, 25] 2 True\nlost\n9\n', r.stdout


def test_terminate_while_tasks_run():
    r = run(FUNCS + '''
if __name__ == '__main__':
    import time
    p = mp.Pool(2)
    rs = [p.apply_async(slow, (60,)) for _ in range(4)]
    it = p.imap(slow, [60] * 4)
    time.sleep(0.3)
    t = time.monotonic()
    p.terminate()
    p.join()
    print(mp.active_children(), threading.active_count(), [r.ready() for r in rs])
    print([w.exitcode for w in p._pool])
''', timeout=60)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == '[] 1 [False, False, False, False]\n[-15, -15]\n', r.stdout


def test_imap_reads_an_endless_iterable_lazily():
    r = run(FUNCS + '''
if __name__ == '__main__':
    import itertools, time
    taken = 0
    def endless():
        global taken
        for i in itertools.count():
            taken = i
            yield i
    with mp.Pool(2) as p:
        it = p.imap(sq, endless())
        print([next(it) for _ in range(10)])
        time.sleep(0.5)
        first = taken
        print([next(it) for _ in range(10)])
        time.sleep(0.5)
        print(taken < 10000, taken - first < 100)
        it = p.imap_unordered(sq, endless(), chunksize=7)
        print(len({next(it) for _ in range(50)}))
''', timeout=60)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == ('[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n'
                        '[100, 121, 144, 169, 196, 225, 256, 289, 324, 361]\n'
                        'True True\n50\n'), r.stdout


def test_large_arguments_and_results():
    r = run(FUNCS + '''
def big(n):
    return b'r' * n

def length(b):
    return len(b)

if __name__ == '__main__':
    with mp.Pool(2) as p:
        print(p.map(length, [b'x' * (3 << 20), b'y' * 10, b'z' * (1 << 19)]))
        print([len(b) for b in p.map(big, [5 << 20, 1, 700000], 1)])
        print(len(p.apply(big, (9 << 20,))))
''', timeout=60)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == '[3145728, 10, 524288]\n[5242880, 1, 700000]\n9437184\n', r.stdout


def test_callback_errors_are_reported_not_fatal():
    r = run(FUNCS + '''
if __name__ == '__main__':
    def bad(v):
        raise RuntimeError('callback failed')
    with mp.Pool(1) as p:
        r = p.apply_async(sq, (2,), callback=bad)
        print(r.get(timeout=30), p.apply(sq, (3,)))
''', timeout=60)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == '4 9\n'
    assert 'RuntimeError: callback failed' in r.stderr


def test_nothing_leaks():
    r = run(FUNCS + '''
import gc

def fds():
    return len(os.listdir('/proc/self/fd'))

def memfds():
    with open('/proc/self/maps') as f:
        return sum('memfd:' in line for line in f)

if __name__ == '__main__':
    from importlib import import_module
    P = import_module(mp.__name__ + '.pool')
    def cycle(i):
        p = mp.Pool(2, maxtasksperchild=3 if i % 3 == 0 else None)
        p.map(sq, range(20), 1)
        p.apply_async(sq, (1,)).get()
        list(p.imap(sq, range(10)))
        if i % 2:
            p.close()
        else:
            p.terminate()
        p.join()
        t = P.ThreadPool(2)
        t.map(sq, range(5))
        t.close()
        t.join()
    cycle(0)
    gc.collect()
    base = (fds(), memfds(), threading.active_count())
    for i in range(1, 9):
        cycle(i)
    with mp.Pool(2) as p:
        p.map(sq, range(4))
    gc.collect()
    now = (fds(), memfds(), threading.active_count())
    print(base == now or (base, now), base[2], mp.active_children())
''', timeout=120)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == 'True 1 []\n', r.stdout


def test_dispatch_tells_finished_from_lost_tasks():
    # The result loop on its own: a DEAD record for a task whose result came
    # first is ignored; one for a task without a result fails it, and a late
    # result of that task (it was also taken again) is dropped.
    r = run('''
from cmp import _core
from cmp.queues import _SimpleRing as SimpleQueue
class Job:
    def __init__(self):
        self.calls = []
    def _set(self, i, obj):
        self.calls.append((i, obj[0], repr(obj[1])))
DEAD, STOP = _core.POOL_RES_DEAD, _core.POOL_RES_STOP
q = SimpleQueue()
cache = {1: Job(), 2: Job()}
_core._pool_post(q, 5, 1, 0, 0 << 32, 'five')            # slot 0 finished seq 5...
_core._pool_post(q, 5, 1, 0, (0 << 32) | DEAD, KeyError('lost 5'))   # ...then died
_core._pool_post(q, 6, 2, 3, (1 << 32) | DEAD, KeyError('lost 6'))   # slot 1 died in seq 6
_core._pool_post(q, 6, 2, 3, 2 << 32, 'six again')      # seq 6 run again elsewhere
_core._pool_post(q, 7, 2, 4, (2 << 32) | 1, ValueError('seven'))     # RES_ERROR
_core._pool_post(q, 8, 9, 0, 0, 'no such job')
_core._pool_post(q, 0, 0, 0, STOP, None)
_core._pool_dispatch(q, cache, 3)
print(cache[1].calls)
print(cache[2].calls)
''', timeout=60)
    assert not r.timed_out and r.returncode == 0, r.stderr
    assert r.stdout == ("[(0, True, \"'five'\")]\n"
                        "[(3, False, \"KeyError('lost 6')\"), "
                        "(4, False, \"ValueError('seven')\")]\n"), r.stdout
