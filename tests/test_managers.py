"""cmp.managers against the stdlib: the SyncManager's shared types used in
the manager's client and in child processes under every start method, errors
raised in the server, custom registered types, the manager's life cycle
(context manager, shutdown, no server process left behind)."""

import os
import re

import pytest

from support import assert_same, normalize, run

METHODS = ['fork', 'spawn', 'forkserver']


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


def norm(text):
    text = normalize(text)
    text = text.replace('multiprocessing.', 'MOD.').replace('cmp.', 'MOD.')
    text = re.sub(r"'/tmp/[^']*'", "'ADDRESS'", text)
    return text


# `show(expr)` prints `expr -> repr(value)` or `expr !! Type: message`; for a
# RemoteError only the last line of the server's traceback is shown.
SHOW = '''
import sys, traceback
managers = __import__(mp.__name__ + '.managers', fromlist=['managers'])

def show(src, env=None):
    env = dict(globals(), **(env or {}))
    try:
        if src.startswith('!'):
            exec(src[1:], env)
            value = None
        else:
            value = eval(src, env)
    except managers.RemoteError as e:
        last = [l for l in str(e).splitlines() if l.strip() and not l.startswith('-')][-1]
        print('%s !! RemoteError: %s' % (src, last))
    except Exception as e:
        print('%s !! %s: %s' % (src, type(e).__name__, e))
    else:
        print('%s -> %r' % (src, value))
    sys.stdout.flush()
'''


def test_api_in_the_client():
    assert_same(SHOW + '''
if __name__ == '__main__':
    m = mp.Manager()
    d = m.dict({'a': 1}, b=2)
    l = m.list(range(5))
    ns = m.Namespace(x=1, _y=2)
    v = m.Value('i', 7)
    a = m.Array('i', [1, 2, 3])
    q = m.Queue()
    lock = m.Lock()
    rlock = m.RLock()
    ev = m.Event()
    sem = m.BoundedSemaphore(2)
    cond = m.Condition()
    bar = m.Barrier(1)
    for src in [
        "d['a']", "d['zz']", "!d['c'] = 3", "len(d)", "'c' in d", "'q' in d",
        "d.keys()", "d.values()", "d.items()", "sorted(d)", "d.get('a')", "d.get('zz', 5)",
        "d.setdefault('e', 9)", "d.pop('e')", "d.pop('zz')", "!d.update({'f': 6}, g=7)",
        "d.copy()", "str(d)", "repr(d)", "d._getvalue()", "!del d['f']", "dict(d)",
        "d.popitem()", "d.__getitem__('a')",
        "l[1]", "l[1:3]", "l[10]", "!l[0] = 'x'", "!l.append(5)", "!l.extend([6])",
        "len(l)", "l.count(2)", "l.index(3)", "l.index(99)", "l.pop()", "!l.insert(0, -1)",
        "!l.remove(3)", "!l.reverse()", "list(l)", "str(l)", "repr(l)", "l + [1]", "l * 2",
        "3 in l", "!del l[0]", "l._getvalue()", "!l += [8]", "!l *= 2", "str(l)",
        "!l.sort()",
        "ns.x", "ns._y", "ns.nope", "!ns.z = 3", "ns.z", "!del ns.z", "ns.z", "str(ns)",
        "repr(ns)",
        "v.value", "!v.value = 8", "v.get()", "v.set(9)", "v.value", "str(v)", "repr(v)",
        "len(a)", "a[1]", "!a[1] = 5", "a[1]", "a[9]", "str(a)",
        "q.put(1)", "q.qsize()", "q.empty()", "q.get()", "q.get(timeout=0.01)",
        "q.get_nowait()", "q.put_nowait(2)", "q.full()", "repr(q)",
        "lock.acquire()", "lock.acquire(False)", "lock.acquire(True, 0.01)",
        "lock.release()", "lock.release()", "!with lock: pass", "repr(lock)",
        "rlock.acquire()", "rlock.acquire()", "rlock.release()", "rlock.release()",
        "rlock.release()",
        "ev.is_set()", "ev.wait(0.01)", "ev.set()", "ev.is_set()", "ev.wait()", "ev.clear()",
        "sem.acquire()", "sem.release()", "sem.release()",
        "cond.acquire()", "cond.wait(0.01)", "cond.notify()", "cond.notify_all()",
        "cond.wait_for(lambda: True)", "cond.wait_for(lambda: False, 0.01)", "cond.release()",
        "cond.notify()",
        "bar.parties", "bar.n_waiting", "bar.broken", "bar.wait()", "bar.reset()",
        "bar.abort()", "bar.broken", "bar.wait()",
        "m._create('nosuch')", "type(m.address)", "m._state.value", "m._process.name",
        "m.start()", "m.connect()",
        "d._callmethod('__len__')", "d._callmethod('nosuch')", "d._callmethod('keys', (), {})",
        "l._callmethod('__getitem__', (99,))",
    ]:
        show(src)
    m.shutdown()
    for src in ["m._state.value", "m.dict()", "m.start()", "m.shutdown()",
                "m._process.is_alive()", "m.__enter__()"]:
        show(src)
''', normalize_output=norm)


def test_iteration_and_nested_proxies():
    assert_same(SHOW + '''
if __name__ == '__main__':
    with mp.Manager() as m:
        d = m.dict(a=1, b=2)
        it = iter(d)
        print(type(it).__name__, sorted(it))
        outer = m.list()
        inner = m.dict(x=1)
        outer.append(inner)
        got = outer[0]
        print(type(got).__name__, got['x'])
        got['x'] = 2
        print(inner['x'], str(outer)[:14])
        del inner, got
        print(outer[0]['x'])
        print(m._number_of_objects())
''', normalize_output=norm)


def test_reference_counting():
    assert_same('''
import gc
if __name__ == '__main__':
    with mp.Manager() as m:
        print(m._number_of_objects())
        d = m.dict()
        l = m.list()
        print(m._number_of_objects())
        d2 = mp.managers.DictProxy(d._token, 'pickle', authkey=m._authkey)
        print(m._number_of_objects())
        del d
        gc.collect()
        print(m._number_of_objects(), d2.keys())
        del d2, l
        gc.collect()
        print(m._number_of_objects())
''')


CHILDREN = SHOW + '''
import time

def work(i, d, l, ns, v, q, lock, ev):
    with lock:
        d['count'] = d['count'] + 1
        v.value += i
    l.append(i)
    setattr(ns, 'w%d' % i, i * i)
    q.put(('done', i))
    if i == 0:
        ev.wait(30)
        q.put('saw event')

def fail(d):
    d['nokey']

if __name__ == '__main__':
    m = mp.Manager()
    d = m.dict(count=0)
    l = m.list()
    ns = m.Namespace()
    v = m.Value('i', 0)
    q = m.Queue()
    lock = m.Lock()
    ev = m.Event()
    ps = [mp.Process(target=work, args=(i, d, l, ns, v, q, lock, ev)) for i in range(4)]
    for p in ps:
        p.start()
    got = sorted(q.get(timeout=30) for _ in ps)
    ev.set()
    print(got, q.get(timeout=30))
    for p in ps:
        p.join(30)
    print([p.exitcode for p in ps])
    print(d['count'], sorted(l), v.value, str(ns))
    p = mp.Process(target=fail, args=(d,))
    p.start(); p.join(30)
    print(p.exitcode)
    pid = m._process.pid
    m.shutdown()
    print(m._process.exitcode)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        print('manager process gone')
'''


def test_proxies_in_children(method):
    std, mine = assert_same('import os\n' + CHILDREN, start_method=method, timeout=90)
    assert 'manager process gone' in mine.stdout
    assert "KeyError: 'nokey'" in mine.stderr


def test_manager_process_gone_at_exit(method):
    # without shutdown() or `with`: the manager is shut down when the program exits
    code = '''
if __name__ == '__main__':
    m = mp.Manager()
    d = m.dict(a=1)
    print(m._process.pid, d['a'])
'''
    for impl in ('multiprocessing', 'cmp'):
        r = run(code, impl, start_method=method, timeout=60)
        assert r.returncode == 0 and not r.timed_out, r.stderr
        pid = int(r.stdout.split()[0])
        assert not os.path.exists('/proc/%d' % pid) or \
            open('/proc/%d/stat' % pid).read().split()[2] == 'Z', impl


CUSTOM = SHOW + '''
import threading

class Counter:
    def __init__(self, start=0):
        self.n = start
    def add(self, k=1):
        self.n += k
        return self.n
    def boom(self):
        raise ValueError('boom %d' % self.n)
    def unpicklable(self):
        return threading.Lock()
    def items(self):
        return iter(range(self.n))
    def _private(self):
        return 'private'

class CounterProxy(managers.BaseProxy):
    _exposed_ = ('add', 'boom')
    def add(self, k=1):
        return self._callmethod('add', (k,))

def make_list(*args):
    return list(args)

class MyManager(managers.BaseManager):
    pass

MyManager.register('Counter', Counter)
MyManager.register('Counted', Counter, CounterProxy)
MyManager.register('Exposed', Counter, exposed=('add', '_private'))
MyManager.register('Iter', Counter, method_to_typeid={'items': 'It'})
MyManager.register('It', proxytype=managers.IteratorProxy, create_method=False)
MyManager.register('make_list', make_list)
MyManager.register('Hidden', Counter, create_method=False)

def child(c):
    print('child', c.add(10))
    sys.stdout.flush()

if __name__ == '__main__':
    with MyManager() as m:
        c = m.Counter(5)
        cc = m.Counted(1)
        ce = m.Exposed()
        ci = m.Iter(3)
        ml = m.make_list(1, 2)
        print(type(c).__name__, type(cc).__name__, type(ml).__name__)
        for src in ["c.add()", "c.add(k=3)", "c.boom()", "c.unpicklable()", "c._private()",
                    "str(c)[:20]", "repr(c)", "repr(cc)", "cc.add(2)", "cc.boom()",
                    "cc._callmethod('boom')", "cc._callmethod('n')",
                    "ce.add()", "ce._private()", "ce.boom()", "hasattr(m, 'Hidden')",
                    "type(ci.items()).__name__", "list(ci.items())", "ml.count(1)",
                    "ml._getvalue()", "sorted(MyManager._registry)",
                    "'Counter' in managers.BaseManager._registry",
                    "type(managers.SyncManager.dict).__name__"]:
            show(src)
        p = mp.Process(target=child, args=(c,))
        p.start(); p.join(30)
        print(p.exitcode, c.add(0))
        m2 = MyManager(address=m.address, authkey=mp.current_process().authkey)
        m2.connect()
        c2 = m2.Counter(100)
        print(c2.add())
        bad = MyManager(address=m.address, authkey=b'wrong')
        show("bad.connect()", {'bad': bad})
    show("m._state.value", {'m': m})
'''


def test_custom_registered_types(method):
    assert_same(CUSTOM, start_method=method, normalize_output=norm, timeout=90)


def test_get_server_and_serve_forever():
    assert_same(SHOW + '''
import threading

class QueueManager(managers.BaseManager):
    pass

shared = []
QueueManager.register('get_list', callable=lambda: shared)

if __name__ == '__main__':
    m = QueueManager(address=('127.0.0.1', 0), authkey=b'abc')
    server = m.get_server()
    print(type(server).__name__, server.address[0])
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    c = QueueManager(address=server.address, authkey=b'abc')
    c.connect()
    l = c.get_list()
    l.append('hi')
    print(shared, l._getvalue())
''', normalize_output=norm)


def test_start_errors_and_initializer(method):
    assert_same(SHOW + '''
def init(x):
    print('init', x, mp.current_process().name)
    sys.stdout.flush()

if __name__ == '__main__':
    m = managers.SyncManager()
    show("m.start(initializer=5)", {'m': m})
    m.start(init, ('hello',))
    show("m.start()", {'m': m})
    show("m.get_server()", {'m': m})
    m.shutdown()
    m.join(10)
    show("m._process", {'m': m})
    show("managers.BaseManager().shutdown()")
    show("managers.BaseManager(serializer='nope')")
    with managers.SyncManager() as m2:
        show("m2.list([1])[0]", {'m2': m2})
    show("m2.list()", {'m2': m2})
''', start_method=method, normalize_output=norm)


def test_notes_style_dict_with_plain_lock(method):
    assert_same('''
def f(n, lock):
    with lock:
        n['value'] += 1

if __name__ == '__main__':
    lock = mp.Lock()
    with mp.Manager() as manager:
        d = manager.dict()
        d['value'] = 0
        ps = [mp.Process(target=f, args=(d, lock)) for _ in range(5)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        print(d['value'])
''', start_method=method, timeout=90)


def test_shared_memory_manager(method):
    std, mine = assert_same(SHOW + '''
import os
shared_memory = __import__(mp.__name__ + '.shared_memory', fromlist=['x'])

def child(name):
    sm = shared_memory.SharedMemory(name)
    sm.buf[0] = 42
    sm.close()

if __name__ == '__main__':
    with managers.SharedMemoryManager() as smm:
        sm = smm.SharedMemory(16)
        sl = smm.ShareableList([1, 'two', None])
        print(sm.size >= 16, list(sl), type(smm).__name__)
        p = mp.Process(target=child, args=(sm.name,))
        p.start(); p.join(30)
        print(p.exitcode, sm.buf[0])
        names = [sm.name, sl.shm.name]
        c = smm._Client(smm.address, authkey=smm._authkey)
        print(sorted(managers.dispatch(c, None, 'list_segments')) == sorted(names))
        c.close()
        sm.close(); sl.shm.close()
        print([os.path.exists('/dev/shm/' + n.lstrip('/')) for n in names])
    print([os.path.exists('/dev/shm/' + n.lstrip('/')) for n in names])
    show("managers.SharedMemoryManager().SharedMemory(1)")
''', start_method=method, normalize_output=norm)
    assert '1 0\n' not in mine.stdout and '[True, True]\n[False, False]' in mine.stdout
    assert 'leaked' not in mine.stderr and 'leaked' not in std.stderr


def test_threads_share_a_proxy():
    assert_same('''
import threading
if __name__ == '__main__':
    with mp.Manager() as m:
        l = m.list()
        q = m.JoinableQueue()
        def work(i):
            for k in range(20):
                l.append((i, k))
            q.put(i)
        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts: t.start()
        for t in ts: t.join(30)
        got = sorted(q.get(timeout=10) for _ in ts)
        for _ in ts: q.task_done()
        q.join()
        print(len(l), sorted(l) == sorted((i, k) for i in range(4) for k in range(20)), got)
''')


def _have_cmp_pool():
    try:
        import cmp.pool     # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_cmp_pool(), reason='cmp.pool is not there yet')
def test_pool_in_the_manager():
    assert_same('''
def sq(x):
    return x * x

if __name__ == '__main__':
    with mp.Manager() as m:
        with m.Pool(2) as p:
            print(p.map(sq, range(5)), p.apply(sq, (3,)))
            r = p.apply_async(sq, (4,))
            print(type(r).__name__, r.get(timeout=30))
            print(list(p.imap(sq, range(3))))
''', timeout=90)


def test_serializers_contexts_and_objects_without_callable():
    assert_same('''
mm = __import__(mp.__name__ + '.managers', fromlist=['managers'])

class M(mm.BaseManager):
    pass

M.register('l', list)
M.register('wrap')

if __name__ == '__main__':
    m = M(serializer='xmlrpclib')
    m.start()
    l = m.l([1])
    l.append(2)
    print(l._getvalue(), str(l))
    m.shutdown()
    with mp.get_context('forkserver').Manager() as sm:
        d = sm.dict(a=1)
        print(d.copy(), sm._process.name, type(sm._ctx).__name__)
    with M() as m2:
        w = m2.wrap([1, 2])
        print(type(w).__name__, w.count(1))
        try:
            m2.wrap()
        except Exception as e:
            print(type(e).__name__, str(e).splitlines()[-2])
        print(m2._debug_info().count('refcount'))
    print(repr(mm.Token('a', '/x', '1')))
    print(repr(str(mm.RemoteError('x\\n'))))
''')
