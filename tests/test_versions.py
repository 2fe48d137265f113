"""What changed between CPython versions, compared with the stdlib of the
version the suite runs on (cmp/_versions.py holds the switches): each snippet
runs on both and must print the same."""
import pytest

from support import assert_same, run

# Names that some versions have and others lack: each prints hasattr(), so the
# test follows whichever version runs it.
NAMES = '''
import importlib
for module, obj, attr in [
        ('queues', 'Queue', '_terminate_broken'), ('queues', 'Queue', '__class_getitem__'),
        ('process', 'BaseProcess', 'interrupt'), ('synchronize', 'Lock', 'locked'),
        ('synchronize', 'RLock', 'locked'), ('synchronize', 'Semaphore', 'locked'),
        ('managers', 'SyncManager', 'set'), ('managers', 'AcquirerProxy', 'locked'),
        ('managers', 'DictProxy', '__class_getitem__'),
        ('managers', 'ListProxy', '__class_getitem__'), ('managers', 'ListProxy', 'clear'),
        ('managers', 'DictProxy', 'fromkeys'), ('managers', None, 'SetProxy'),
        ('util', None, 'warn'), ('util', None, '_warn'), ('util', None, 'WARNING'),
        ('connection', None, 'CHALLENGE')]:
    m = importlib.import_module(mp.__name__ + '.' + module)
    target = getattr(m, obj) if obj else m
    print(module, obj, attr, hasattr(target, attr))
print(sorted(mp.managers.ConditionProxy._exposed_))
print(mp.get_all_start_methods(), mp.get_start_method())
print(mp.connection.BUFSIZE, mp.connection.MESSAGE_LENGTH)
'''


def test_names_of_this_version():
    assert_same(NAMES)


def test_behaviour_of_this_version():
    assert_same('''
    import os, signal, time, collections.abc
    def sleeper(ready):
        try:
            ready.set()
            time.sleep(30)
        except KeyboardInterrupt:
            os._exit(7)
    if __name__ == '__main__':
        lock = mp.Lock()
        if hasattr(lock, 'locked'):
            print(lock.locked(), lock.acquire(), lock.locked())
        if hasattr(mp.Process, 'interrupt'):
            ready = mp.Event()
            p = mp.Process(target=sleeper, args=(ready,))
            p.start()
            ready.wait(30)
            p.interrupt()
            p.join()
            print('interrupted', p.exitcode)
        with mp.Manager() as m:
            if hasattr(m, 'set'):
                s = m.set([1, 2])
                s |= {3}
                s -= {1}
                print(sorted(s), type(s).__name__)
                d = m.dict(a=1)
                d |= {'b': 2}
                print(sorted(d.items()), list(reversed(d)), sorted((d | {'c': 3}).items()))
                l = m.list([1, 2])
                c = l.copy()
                l.clear()
                print(list(l), c, isinstance(l, collections.abc.MutableSequence))
            cond = m.Condition()
            if hasattr(cond, 'locked'):
                with cond:
                    print('condition locked', cond.locked())
        for code in ('z', 'zz'):
            try:
                mp.RawValue(code)
            except TypeError as e:
                print('TypeError', e)
        from importlib import import_module
        sm = import_module(mp.__name__ + '.shared_memory')
        sl = sm.ShareableList([1, 2])
        try:
            sl.index(99)
        except ValueError as e:
            print('ValueError', e)
        sl.shm.close(); sl.shm.unlink()
        try:
            lock.acquire(blocking=True)
        except TypeError as e:
            print('TypeError', e)
    ''')


def test_pool_default_size():
    assert_same('''
    import os
    if __name__ == '__main__':
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        with mp.Pool() as p:
            print(len(p._pool))
    ''')


@pytest.mark.parametrize('server,client', [('multiprocessing', 'cmp'),
                                           ('cmp', 'multiprocessing')])
def test_handshake_between_implementations(server, client):
    # A Listener of one and a Client of the other, with a good and a bad key.
    r = run('''
    import threading, multiprocessing.connection as S
    import cmp.connection as C
    L, Cl = (%s.Listener, %s.Client)
    for skey, ckey in ((b'k', b'k'), (b'k', b'bad')):
        with L(authkey=skey) as l:
            out = []
            def serve():
                try:
                    with l.accept() as c:
                        c.send('hi')
                except Exception as e:
                    out.append(type(e).__name__)
            t = threading.Thread(target=serve)
            t.start()
            try:
                with Cl(l.address, authkey=ckey) as c:
                    print(c.recv())
            except Exception as e:
                print(type(e).__name__)
            t.join()
            print(out)
    ''' % ('S' if server == 'multiprocessing' else 'C', 'S' if client == 'multiprocessing' else 'C'))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split('\n')[:4] == ['hi', '[]', 'AuthenticationError',
                                        "['AuthenticationError']"], r.stdout


def test_fork_with_threads_warns_as_the_stdlib():
    assert_same('''
    import threading, time, warnings
    if __name__ == '__main__':
        t = threading.Thread(target=time.sleep, args=(2,))
        t.start()
        ctx = mp.get_context('fork')
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            p = ctx.Process(target=print, args=('child',))
            p.start(); p.join()
        print([(x.category.__name__, str(x.message).split(')')[1]) for x in w])
        warnings.simplefilter('error')
        p = ctx.Process(target=print, args=('child',))
        p.start(); p.join()
        print(p.exitcode)
    ''')


def test_set_proxy_is_a_mutable_set():
    # The stdlib of 3.14 registers SetProxy as a MutableMapping, by a slip;
    # cmp registers it as what it is.
    import collections.abc
    from cmp import _versions, managers
    if not _versions.MANAGER_SETS:
        pytest.skip('SyncManager.set() comes with 3.14')
    assert issubclass(managers.SetProxy, collections.abc.MutableSet)
    assert not issubclass(managers.SetProxy, collections.abc.MutableMapping)
