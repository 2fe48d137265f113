"""Value, Array, RawValue, RawArray and cmp.sharedctypes: against the stdlib
(every constructor form, type code, accessor, error and repr), across
processes under every start method, with numpy, and on their own (locks,
memory reclaimed)."""

import pytest

from support import assert_same, normalize, run

METHODS = ['fork', 'spawn', 'forkserver']

try:
    import numpy
except ImportError:
    numpy = None


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


def norm(text):
    """support.normalize, and the module that ctypes names in array reprs."""
    return normalize(text).replace('multiprocessing.sharedctypes.', 'cmp.sharedctypes.')


def check_ok(result):
    assert not result.timed_out, result.stderr
    assert result.returncode == 0, result.stderr
    return result.stdout


# Prints `expr -> repr` or `expr !! Error: message` for each expression or
# statement; run by the differential tests below.
PROBE = '''
import ctypes, sys
sc = __import__(mp.__name__ + '.sharedctypes', fromlist=['sharedctypes'])

class Point(ctypes.Structure):
    _fields_ = [('x', ctypes.c_int), ('y', ctypes.c_double)]

def show(*exprs):
    for expr in exprs:
        try:
            print(expr, '->', repr(eval(expr)))
        except BaseException as e:
            print(expr, '!!', type(e).__name__, e)

def do(*stmts):
    for stmt in stmts:
        try:
            exec(stmt, globals())
            print(stmt, '-> ok')
        except BaseException as e:
            print(stmt, '!!', type(e).__name__, e)
'''


def probe(code):
    assert_same(PROBE + code, normalize_output=norm)


def test_constructor_forms_and_type_codes():
    probe('''
        for c in 'bBhHiIlLqQfdcu':
            show('mp.RawValue(%r)' % c, 'mp.Value(%r)' % c, 'mp.RawArray(%r, 2)[:]' % c,
                 'mp.Array(%r, 3)' % c, 'mp.Value(%r).get_obj()' % c,
                 'mp.RawArray(%r, 2)._length_' % c, 'mp.RawArray(%r, 2)._type_' % c)
        for t in ('c_bool', 'c_byte', 'c_ubyte', 'c_short', 'c_ushort', 'c_int', 'c_uint',
                  'c_long', 'c_ulong', 'c_longlong', 'c_ulonglong', 'c_float', 'c_double',
                  'c_char', 'c_wchar', 'c_int8', 'c_uint16', 'c_int32', 'c_int64',
                  'c_size_t', 'c_ssize_t', 'c_longdouble'):
            show('mp.Value(ctypes.%s)' % t, 'mp.RawValue(ctypes.%s, 1)' % t,
                 'mp.Array(ctypes.%s, 2)[:]' % t, 'mp.RawArray(ctypes.%s, [1, 0])[:]' % t)
        show("mp.Value('i', 5)", "mp.Value('d', 2.5).value", "mp.Value('i', 5, lock=False)",
             "mp.RawValue('i', 1, 2)", "mp.Value('i', 1, 2)", "mp.Value()", "mp.RawArray('i')",
             "mp.Value('x')", "mp.Value(5)", "mp.Value('g')", "mp.Value('?')", "mp.Array('x', 3)",
             "mp.Array('i', 3.0)", "mp.Array('i', -1)", "mp.Array('i', True)[:]",
             "mp.Array('i', (x for x in range(3)))", "mp.Array('i', range(4))[:]",
             "mp.Array('i', 2**62)", "mp.Array('i', 0)[:]", "mp.Array('c', b'hi')",
             "mp.Array('c', 'hi')", "mp.Array('u', 'hi')", "mp.Array('u', 'hi')[:]",
             "mp.Array('i', ['a'])", "mp.Array('i', [1, 'a'])", "mp.Array('i', 3, lock=False)",
             "mp.RawArray('d', [1, 2.5])[:]", "mp.Array('i', [1, 2], 3)",
             "mp.Value(Point, 1, 2.5)", "mp.Value(Point, 1, 2.5).x", "mp.Value(Point).y",
             "mp.RawValue(Point, 3, 4)", "mp.RawValue(Point, 3, 4).y",
             "mp.Array(Point, [(1, 2), (3, 4)])", "mp.Array(Point, [(1, 2), (3, 4)])[1].y",
             "mp.Array(Point, 2, lock=False)[1].x", "type(mp.Value(Point)).__name__",
             "mp.Value(ctypes.c_int.__ctype_be__, 7).value",
             "sc.RawValue('i', 3)", "sc.Value('i', 3)", "sc.RawArray('b', 2)", "sc.Array('b', 2)")
    ''')


def test_lock_forms():
    probe('''
        import threading
        show("mp.Value('i', lock=True)", "mp.Value('i', lock=1)", "mp.Value('i', lock=None)",
             "mp.Value('i', lock=0)", "mp.Value('i', lock='abc')", "mp.Value('i', lock=[])",
             "mp.Value('i', lock=False)", "mp.Array('i', 2, lock=3)", "mp.Array('i', 2, lock=False)",
             "mp.Value('i', lock=mp.Lock()).get_lock()", "mp.Array('c', 2, lock=mp.RLock()).get_lock()",
             "mp.Value('i', lock=threading.Lock())", "mp.Value('i', 0, False)",
             "sc.Value('i', lock=mp.Lock(), ctx=None)", "sc.Array('i', 1, lock=True, ctx=mp.get_context())")
        l = mp.RLock()
        v = mp.Value('i', lock=l)
        a = mp.Array('d', 2, lock=l)
        show('v.get_lock() is l', 'a.get_lock() is l', 'v._lock is l', 'v.acquire()', 'v.release()',
             'v.release()', 'v.__enter__()', 'v.__exit__(None, None, None)', 'a.acquire(False)',
             'a.release()')
        tl = threading.Lock()
        v = mp.Value('i', lock=tl)
        do('v.value = 3', "v.value = 'x'")
        show('tl.locked()', 'v.value', 'v')
    ''')


def test_value_accessors_and_conversions():
    probe('''
        for expr in ("mp.Value('i', 2**40)", "mp.Value('b', 300)", "mp.Value('B', -1)",
                     "mp.Value('Q', -1)", "mp.Value('i', 2**70)", "mp.Value('h', -2**15 - 1)",
                     "mp.Value('I', -1)", "mp.Value('L', 2**64 + 5)", "mp.Value('q', -2**63)",
                     "mp.Value('f', 1e300)", "mp.Value('f', 0.1)", "mp.Value('d', 3)",
                     "mp.Value('d', True)", "mp.Value('i', True)", "mp.Value('c', 65)",
                     "mp.Value('c', bytearray(b'z'))", "mp.Value('c', True)", "mp.Value('u', 'q')",
                     "mp.Value(ctypes.c_bool, 2)", "mp.Value(ctypes.c_bool, [])",
                     "mp.Value(ctypes.c_bool, 'x')"):
            show(expr, expr + '.value')
        show("mp.Value('i', 1.5)", "mp.Value('i', '1')", "mp.Value('i', None)",
             "mp.Value('d', 'x')", "mp.Value('d', 2**2000)", "mp.Value('d', None)",
             "mp.Value('c', b'ab')", "mp.Value('c', 'a')", "mp.Value('c', 256)", "mp.Value('c', -1)",
             "mp.Value('c', 2**80)", "mp.Value('u', 'ab')", "mp.Value('u', 65)", "mp.Value('u', b'a')",
             "mp.RawValue('i', x=1)")
        v = mp.Value('i', 7)
        r = mp.RawValue('d', 1.5)
        do('v.value = 1.5', "v.value = 'x'", 'v.value = 2**64 + 3', 'del v.value', 'v.value += 1',
           'r.value = 2', "r.value = 'x'", 'r.value *= 3', 'v.foo = 1', 'v.get_obj().value = 11')
        show('v', 'v.value', 'v.foo', 'r', 'r.value', 'v.get_obj()', 'v._obj', 'v.get_lock()',
             'str(v)', 'str(r)', 'v.get_obj() is v.get_obj()')
    ''')


def test_array_accessors_and_errors():
    probe('''
        a = mp.Array('i', [1, 2, 3, 4, 5])
        r = mp.RawArray('i', [3, 1, 2])
        d = mp.Array('d', 3)
        show('a[0]', 'a[-1]', 'a[5]', 'a[-6]', "a['x']", 'a[1.0]', 'a[None]', 'a[True]',
             'a[2**70]', 'a[-2**70]', 'a[1:3]', 'a[::2]', 'a[::-1]', 'a[10:20]', 'a[-1:-4:-1]',
             "a[:'a']", 'a[::0]', 'len(a)', 'list(a)', '3 in a', '9 in a', 'list(reversed(a))',
             'a.__getslice__(0, 2)', 'a.value', 'a.raw', 'a', 'a.get_obj()', 'a.get_obj()[:]',
             'r[0]', 'r[-1]', 'r[3]', 'r[1:]', 'sorted(r)', 'sum(r)', 'len(r)', '2 in r',
             'list(reversed(r))', 'r.value', 'r', 'd[:]', 'list(d)')
        do('a[0] = 1.5', "a[0] = 'x'", 'a[0] = 2**40', 'a[5] = 1', 'a[-6] = 1', "a['x'] = 1",
           'a[2**70] = 1', 'del a[0]', 'del a[0:2]', 'a[0:2] = [9]', 'a[0:2] = 5',
           'a[0:2] = [7, 8]', 'a[::2] = [0, 0, 0]', 'a[:] = (1, 2, 3, 4, 5)', "a[0:2] = ['x', 'y']",
           "a[0:2] = [1, 'y']", "a[0:2] = b'ab'", 'a[0:2] = range(2)', 'a[0:2] = iter([1, 2])',
           'a[::-1] = [5, 4, 3, 2, 1]', 'a.__setslice__(0, 2, [6, 6])', 'a[4:0:-2] = [9, 9]',
           'r[0] = -1', 'r[5] = 0', 'r[:] = [4, 5, 6]', 'del r[0]', 'r[0:1] = [1, 2]',
           'd[0] = 1', "d[0] = '1'", 'd[0] = 2**2000', 'd[1:] = (2.5, 3)', 'd[0] += 1',
           'a.value = 1')
        show('a[:]', 'r[:]', 'd[:]', 'a.value')
    ''')


def test_char_and_wchar_arrays():
    probe('''
        c = mp.Array('c', b'hello\\0xy')
        u = mp.Array('u', 'hey')
        rc = mp.RawArray('c', 4)
        ru = mp.RawArray('u', 3)
        show('c', 'c[0]', 'c[:]', 'c[::-1]', 'c[1:3]', 'c.value', 'c.raw', 'len(c)',
             'c.get_obj()._type_', 'c.get_obj().value', 'list(c)',
             'u', 'u[0]', 'u[:]', 'u[::2]', 'u.value', 'u.raw', 'list(u)',
             'rc', 'rc.value', 'rc.raw', 'ru.value', 'ru.raw', 'ru[:]',
             "mp.Array('c', 0).value", "mp.Array('c', b'')[:]", "mp.RawArray('c', b'ab\\0c').value")
        do("c[0] = b'X'", 'c[0] = 66', "c[0] = b'XY'", "c[0] = 'x'", 'c[0] = 300',
           "c[0] = bytearray(b'q')", "c[0:2] = b'QR'", "c[0:2] = b'Q'", 'c[0:2] = [65, 66]',
           "c[0:2] = 'ab'", "c[::2] = b'abcd'", "c.value = b'zz'", "c.value = b'123456789'",
           "c.value = 'zz'", "c.value = bytearray(b'a')", 'del c.value',
           "c.raw = b'abcdefgh'", "c.raw = bytearray(b'zz')", "c.raw = b'123456789'",
           "c.raw = 'x'", "c.raw = memoryview(b'q')", 'del c.raw',
           "u[0] = 'Z'", "u[0] = 'ZZ'", 'u[0] = 5', "u[0:2] = 'xy'", "u[0:2] = ['a', 'b']",
           "rc.value = b'abcd'", "rc.value = b'abcde'", "rc.raw = b'12'", "rc[0:2] = b'zz'",
           "ru.value = 'ab'", "ru.value = 'abcd'", "ru.value = 'abc'", "ru.value = b'x'",
           "ru[2] = 'q'")
        show('c.raw', 'c.value', 'u[:]', 'rc.raw', 'rc.value', 'ru[:]', 'ru.value')
    ''')


def test_synchronized_copy_and_pickling():
    probe('''
        import pickle
        r = mp.RawValue('i', 5)
        ra = mp.RawArray('i', [1, 2])
        show('sc.synchronized(r)', 'sc.synchronized(r).value', 'sc.synchronized(ctypes.c_int(3))',
             "sc.synchronized(mp.RawArray('c', 3))", "sc.synchronized(mp.RawArray('u', 3))",
             'sc.synchronized(ra)[:]', 'sc.synchronized(ra, mp.Lock()).get_lock()',
             "sc.synchronized(mp.Value('i'))", 'sc.synchronized(ctypes.c_int(3), lock=True)',
             'sc.synchronized(mp.RawValue(Point, 1, 2)).y',
             'sc.copy(r)', 'sc.copy(r) is r', 'sc.copy(ra)[:]', "sc.copy(mp.RawArray('c', b'xy')).raw",
             "sc.copy(mp.RawArray('u', 'xy'))[:]", "sc.copy(mp.Value('i'))",
             'sc.copy(mp.RawValue(ctypes.c_longdouble, 3)).value', 'sc.copy(mp.RawValue(Point, 1, 2)).y',
             "sc.Synchronized(ctypes.c_int(3), mp.Lock())", "sc.Synchronized(ctypes.c_int(3), True)",
             "isinstance(mp.Value('i'), sc.Synchronized)",
             "isinstance(mp.Array('i', 1), sc.SynchronizedArray)",
             "isinstance(mp.Array('c', 1), sc.SynchronizedString)",
             "isinstance(mp.Array('c', 1), sc.SynchronizedArray)",
             "isinstance(mp.Value('i'), sc.SynchronizedBase)",
             "isinstance(mp.Value(Point), sc.SynchronizedBase)",
             "sorted(n for n in sc.__all__)",
             "pickle.dumps(mp.Value('i'))", "pickle.dumps(mp.Array('i', 2))",
             "pickle.dumps(mp.Array('c', 2))", "pickle.dumps(mp.Value(Point))",
             "mp.reduction.ForkingPickler.dumps(mp.RawValue('i'))",
             "mp.reduction.ForkingPickler.dumps(mp.RawArray('i', 3))",
             "mp.reduction.ForkingPickler.dumps(mp.RawValue(Point))",
             "mp.reduction.ForkingPickler.dumps(mp.Value('d'))")
        c = sc.copy(r)
        c.value = 9
        show('r.value', 'c.value')
    ''')


def test_get_obj_is_ctypes_over_the_same_memory():
    out = check_ok(run('''
        import ctypes
        a = mp.Array('d', [1.5, 2.5])
        v = mp.Value('i', 4)
        o = a.get_obj()
        print(type(o).__name__, isinstance(o, ctypes.Array), o._type_ is ctypes.c_double)
        print(o is a.get_obj(), ctypes.addressof(o) != 0, ctypes.sizeof(o))
        o[1] = 9
        v.get_obj().value = 5
        print(a[:], v.value, type(v.get_obj()).__name__)
        p = ctypes.cast(ctypes.addressof(o), ctypes.POINTER(ctypes.c_double))
        p[0] = 7
        print(a[0])
        raw = mp.RawArray('i', 3)
        mv = memoryview(raw)
        print(mv.format, mv.shape, mv.itemsize, mv.readonly, mv.nbytes)
        mv[1] = 42
        print(raw[:], memoryview(mp.RawValue('q', 3)).shape, memoryview(mp.RawValue('q', 3))[()])
        print(bytes(mp.RawArray('B', [1, 2])), memoryview(a).tolist())
    '''))
    assert out == ('c_double_Array_2 True True\n'
                   'True True 16\n'
                   '[1.5, 9.0] 5 c_int\n'
                   '7.0\n'
                   'i (3,) 4 False 12\n'
                   '[0, 42, 0] () 3\n'
                   "b'\\x01\\x02' [7.0, 9.0]\n")


# ---------------------------------------------------------------------------
# Across processes

def test_locked_increments_add_up(method):
    # N processes x M `with v.get_lock(): v.value += 1`, plus the same on an
    # array element and under the value's own locking (v.value += 1 alone is
    # two locked accesses, so it may lose updates: not checked).
    out = check_ok(run('''
        def work(v, a, m):
            for _ in range(m):
                with v.get_lock():
                    v.value += 1
                with a.get_lock():
                    a[1] += 1
        if __name__ == '__main__':
            v = mp.Value('i', 0)
            a = mp.Array('q', 3)
            ps = [mp.Process(target=work, args=(v, a, 2000)) for _ in range(4)]
            for p in ps:
                p.start()
            work(v, a, 2000)
            for p in ps:
                p.join()
            print(v.value, a[:], [p.exitcode for p in ps])
    ''', start_method=method, timeout=120))
    assert out == '10000 [0, 10000, 0] [0, 0, 0, 0]\n'


def test_every_kind_is_shared_with_children(method):
    out = check_ok(run('''
        import ctypes
        class Point(ctypes.Structure):
            _fields_ = [('x', ctypes.c_int), ('y', ctypes.c_double)]
        def child(v, a, c, u, r, rv, p, pa, b):
            v.value += 1; a[2] = a[0] + a[1]; c.value = b'child'; u[0] = 'Z'
            r[1] = -7; rv.value = 2.5; p.x += 5; pa[1].y = 8.5; b.value = True
        if __name__ == '__main__':
            v = mp.Value('i', 1)
            a = mp.Array('d', [1.5, 2.0, 0])
            c = mp.Array('c', 10)
            u = mp.Array('u', 'abc')
            r = mp.RawArray('q', 2)
            rv = mp.RawValue(ctypes.c_float)
            p = mp.Value(Point, 1, 2.0)
            pa = mp.RawArray(Point, 2)
            b = mp.Value(ctypes.c_bool, lock=False)
            q = mp.Process(target=child, args=(v, a, c, u, r, rv, p, pa, b))
            q.start(); q.join()
            print(q.exitcode, v.value, a[:], c.value, u[:], r[:], rv.value, p.x, pa[1].y, b.value)
    ''', start_method=method))
    assert out == "0 2 [1.5, 2.0, 3.5] b'child' Zbc [0, -7] 2.5 6 8.5 True\n"


def test_large_array_shared_with_children(method):
    out = check_ok(run('''
        def child(a):
            a[:] = range(len(a))
            a[-1] = -1
        if __name__ == '__main__':
            a = mp.Array('i', 100000)
            q = mp.Process(target=child, args=(a,))
            q.start(); q.join()
            print(q.exitcode, sum(a[:-1]) == sum(range(99999)), a[-1], len(a))
    ''', start_method=method))
    assert out == '0 True -1 100000\n'


@pytest.mark.skipif(numpy is None, reason='numpy is not installed')
@pytest.mark.parametrize('method', ['fork', 'spawn'])
def test_numpy_views_see_writes_from_another_process(method):
    out = check_ok(run('''
        import numpy as np
        def child(a, r, ready, done):
            np.frombuffer(a.get_obj())[:] = 2.5        # through the ctypes object
            np.frombuffer(r, dtype=np.int32)[1] = 99   # straight from the raw array
            ready.set()
            done.wait(10)
            a[0] = -1.0
        if __name__ == '__main__':
            a = mp.Array('d', 4)
            r = mp.RawArray('i', 3)
            view = np.frombuffer(a.get_obj())        # made before the child writes
            rview = np.frombuffer(r, dtype=np.int32)
            wview = np.asarray(memoryview(a))
            ready, done = mp.Event(), mp.Event()
            p = mp.Process(target=child, args=(a, r, ready, done))
            p.start()
            ready.wait(10)
            print(view.tolist(), rview.tolist(), wview.tolist())
            done.set()
            p.join()
            print(view[0], wview[0], p.exitcode)
    ''', start_method=method))
    assert out == ('[2.5, 2.5, 2.5, 2.5] [0, 99, 0] [2.5, 2.5, 2.5, 2.5]\n'
                   '-1.0 -1.0 0\n')


def test_sent_outside_of_spawning():
    # Through a Pipe: the stdlib's RuntimeError for each kind.
    probe('''
        a, b = mp.Pipe()
        for expr in ("mp.Value('i')", "mp.Array('c', 3)", "mp.Array('d', 3)", "mp.RawValue('i')",
                     "mp.RawArray('d', 2)", "mp.Value(Point)", "mp.RawArray(Point, 2)"):
            show('a.send(%s)' % expr)
        a.send(mp.Value('i', 3).value)
        show('b.recv()')
    ''')


# ---------------------------------------------------------------------------
# Locks and threads

def test_threads_contend_on_a_value():
    out = check_ok(run('''
        import threading
        v = mp.Value('l', 0)
        a = mp.Array('i', 2)
        def work():
            for _ in range(20000):
                with v.get_lock():
                    v.value += 1
                with a:
                    a[0] += 1
        ts = [threading.Thread(target=work) for _ in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        print(v.value, a[:])
    '''))
    assert out == '80000 [80000, 0]\n'


def test_accessors_wait_for_the_lock():
    # .value and indexing take the lock: they block while another process holds it.
    out = check_ok(run('''
        import time
        def hold(v, ready):
            with v.get_lock():
                ready.set()
                time.sleep(0.5)
                v.value = 1
        if __name__ == '__main__':
            v = mp.Value('i', 0)
            ready = mp.Event()
            p = mp.Process(target=hold, args=(v, ready))
            p.start()
            ready.wait(10)
            print(v.value)      # waits for the holder: sees its write
            p.join()
    '''))
    assert out == '1\n'


def test_failed_access_releases_the_lock():
    out = check_ok(run('''
        import threading
        for lock in (mp.RLock(), mp.Lock(), threading.Lock(), threading.RLock()):
            v = mp.Value('i', lock=lock)
            a = mp.Array('i', 2, lock=lock)
            for f in (lambda: setattr(v, 'value', 'x'), lambda: a[5], lambda: a.__setitem__(0, 'x')):
                try:
                    f()
                except (TypeError, IndexError):
                    pass
            print(lock.acquire(timeout=1), end=' ')
            lock.release()
        print()
    '''))
    assert out == 'True True True True \n'


# ---------------------------------------------------------------------------
# Memory

def test_memory_is_reclaimed_when_dropped():
    out = check_ok(run('''
        import gc
        from cmp import _core
        def used():
            gc.collect()
            return _core.shm_stats()
        base = used()
        for i in range(2000):
            v = mp.Value('d', i)
            a = mp.Array('i', 100)
            a.get_obj()          # a cached ctypes view makes a cycle
            big = mp.RawArray('d', 10000)
            del v, a, big
        after = used()
        print(after[2] - base[2], after[0] - base[0] <= 1)
    ''', impl='cmp'))
    assert out == '0 True\n'
