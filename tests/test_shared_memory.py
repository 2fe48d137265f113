"""shared_memory.SharedMemory and ShareableList: against the stdlib, across
implementations, and the tracking the stdlib gets wrong."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from support import assert_same, child_env, run

NAME = re.compile(r'psm_[0-9a-f]{8}')


def norm(text):
    return NAME.sub('psm_X', text)


@pytest.fixture
def shm_entries():
    """Assert that a test leaves /dev/shm as it found it."""
    before = set(os.listdir('/dev/shm'))
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = set(os.listdir('/dev/shm')) - before
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)     # a tracker cleans up just after its program exits
    assert not extra, 'left in /dev/shm: %s' % sorted(extra)


def test_shared_memory_api(shm_entries):
    assert_same('''
        import importlib, pickle
        sm = importlib.import_module(mp.__name__ + '.shared_memory')
        def attempt(f):
            try:
                print('ok', repr(f()))
            except BaseException as e:
                print(type(e).__name__, e)
        attempt(lambda: sm.SharedMemory(size=-1))
        attempt(lambda: sm.SharedMemory(create=True, size=0))
        attempt(lambda: sm.SharedMemory())
        attempt(lambda: sm.SharedMemory('cmp_test_nonexistent'))
        attempt(lambda: sm.SharedMemory(name=3, create=True, size=3))
        attempt(lambda: sm.SharedMemory(create=True, size='1'))
        s = sm.SharedMemory(create=True, size=10)
        print(len(s.name), s.size, repr(s), type(s.buf), len(s.buf))
        attempt(lambda: sm.SharedMemory(s.name, create=True, size=10))
        s.buf[:3] = b'abc'
        t = sm.SharedMemory(s.name, size=5)
        print(t.size, bytes(t.buf[:4]), t.name == s.name)
        u = pickle.loads(pickle.dumps(s))
        print(type(u).__name__, u.size, bytes(u.buf[:3]))
        v = s.buf[2:4]
        attempt(s.close)
        v.release(); s.close(); s.close()
        print(s.buf, s.size)
        s.unlink()
        attempt(s.unlink)
        for x in (t, u):
            x.close()
        n = sm.SharedMemory(name='cmp_test_named', create=True, size=100)
        print(n.name, n.size)
        n.close(); n.unlink()
    ''', normalize_output=norm)




def test_shareable_list_api(shm_entries):
    assert_same('''
        import importlib
        sm = importlib.import_module(mp.__name__ + '.shared_memory')
        def attempt(f):
            try:
                print('ok', repr(f()))
            except BaseException as e:
                print(type(e).__name__, e)
        l = sm.ShareableList([1, 2.5, True, None, 'héllo', b'by\\x00', -3])
        print(repr(l), l.format, len(l), list(l), l.shm.size)
        print(bytes(l.shm.buf))
        attempt(lambda: l[7])
        attempt(lambda: l.__setitem__(9, 1))
        attempt(lambda: l.__setitem__(4, 'x' * 20))
        l[4] = 'abc'; l[0] = 'zz'; l[1] = None; l[2] = 7; l[-1] = 1.5
        print(list(l), l.format)
        attempt(lambda: l.index(99))
        print(l.count(None), l.index(7), l[-1], l[-7])
        attempt(lambda: sm.ShareableList([[1]]))
        attempt(lambda: l.__setitem__(0, 2 ** 70))
        other = sm.ShareableList(name=l.shm.name)
        print(list(other), other.format)
        e = sm.ShareableList()
        print(len(e), e.format, e.shm.size, list(e))
        print(sm.ShareableList[int].__args__)
        for x in (other, l, e):
            x.shm.close()
        l.shm.unlink(); e.shm.unlink()
    ''', normalize_output=lambda t: norm(t).replace('multiprocessing', 'cmp'))


CROSS = '''
import sys, importlib
sm = importlib.import_module(sys.argv[1] + '.shared_memory')
role = sys.argv[2]
if role == 'create':
    s = sm.SharedMemory(create=True, size=64)
    s.buf[:5] = b'hello'
    l = sm.ShareableList([7, 'text', b'raw', 2.5, None, True])
    print(s.name, l.shm.name, flush=True)
    sys.stdin.readline()           # wait until the other side has looked
    print(bytes(s.buf[:5]), list(l), flush=True)
    s.close(); s.unlink()
    l.shm.close(); l.shm.unlink()
else:
    s = sm.SharedMemory(sys.argv[3])
    l = sm.ShareableList(name=sys.argv[4])
    if sys.argv[1] == 'multiprocessing':
        # 3.11 registers attached blocks and unlinks them at exit; opt out.
        from multiprocessing import resource_tracker
        for block in (s, l.shm):
            resource_tracker.unregister(block._name, 'shared_memory')
    print(bytes(s.buf[:5]), list(l), l.format, flush=True)
    s.buf[:5] = b'HELLO'
    l[0] = 8; l[1] = 'new'
    s.close(); l.shm.close()
'''


@pytest.mark.parametrize('creator, attacher', [('cmp', 'multiprocessing'),
                                               ('multiprocessing', 'cmp')])
def test_cross_implementation(tmp_path, creator, attacher, shm_entries):
    script = tmp_path / 'cross.py'
    script.write_text(CROSS)
    env = child_env()
    with subprocess.Popen([sys.executable, str(script), creator, 'create'], env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as c:
        name, list_name = c.stdout.readline().split()
        a = subprocess.run([sys.executable, str(script), attacher, 'attach', name, list_name],
                           env=env, capture_output=True, text=True, timeout=60)
        assert a.returncode == 0, a.stderr
        assert a.stdout == "b'hello' [7, 'text', b'raw', 2.5, None, True] q8s8sdxxxxxx?xxxxxxxx?\n"
        out, _ = c.communicate('go\n', timeout=60)
        assert out == "b'HELLO' [8, 'new', b'raw', 2.5, None, True]\n"
        assert c.returncode == 0


def test_attaching_never_unlinks(tmp_path, shm_entries):
    """The stdlib (3.11) registers attached blocks too, so a reader's exit
    unlinks the creator's block with warnings; cmp's attach does not."""
    script = tmp_path / 'creator.py'
    script.write_text(textwrap.dedent('''
        import sys
        from cmp import shared_memory as sm
        s = sm.SharedMemory(create=True, size=16)
        print(s.name, flush=True)
        sys.stdin.readline()
        t = sm.SharedMemory(s.name)
        print('alive', t.size, flush=True)
        t.close(); s.close(); s.unlink()
    '''))
    with subprocess.Popen([sys.executable, str(script)], env=child_env(), text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as c:
        name = c.stdout.readline().strip()
        reader = run('''
            import sys
            from cmp import shared_memory as sm
            r = sm.SharedMemory(sys.argv[1])
            print(r.size)
        ''', 'cmp', args=(name,))
        assert reader.stdout == '16\n' and reader.stderr == ''
        out, err = c.communicate('\n', timeout=30)
        assert out == 'alive 16\n', err
        assert err == ''


@pytest.mark.parametrize('ending', ['exit', 'sigkill', 'exception'])
def test_leaked_block_is_unlinked_with_warning(tmp_path, ending, shm_entries):
    script = tmp_path / 'leak.py'
    script.write_text(textwrap.dedent('''
        import os, signal, sys, time
        from cmp import shared_memory as sm
        s = sm.SharedMemory(create=True, size=32)
        kept = sm.SharedMemory(create=True, size=32, track=False)
        print(s.name, kept.name, flush=True)
        if sys.argv[1] == 'sigkill':
            os.kill(os.getpid(), signal.SIGKILL)
        if sys.argv[1] == 'exception':
            raise RuntimeError('died')
    '''))
    p = subprocess.run([sys.executable, str(script), ending], env=child_env(),
                       capture_output=True, text=True, timeout=60)
    name, kept = p.stdout.split()
    deadline = time.monotonic() + 5
    while os.path.exists('/dev/shm/' + name):
        assert time.monotonic() < deadline, 'leaked block was not unlinked'
        time.sleep(0.02)
    # track=False opts out: that one stays until unlinked by hand.
    assert os.path.exists('/dev/shm/' + kept)
    os.unlink('/dev/shm/' + kept)
    time.sleep(0.2)
    assert ('UserWarning: resource_tracker: There appear to be 1 leaked '
            'shared_memory objects to clean up at shutdown') in p.stderr or ending == 'sigkill'


def test_children_share_the_tracker(shm_entries):
    r = run('''
        from cmp import shared_memory as sm
        def make(q_name):
            s = sm.SharedMemory(create=True, size=8)   # a child's leak: cleaned too
            print('child made one', flush=True)
        if __name__ == '__main__':
            import cmp
            p = cmp.Process(target=make, args=('x',))
            p.start(); p.join()
            s = sm.SharedMemory(create=True, size=8)
            s.close(); s.unlink()
            print('done', p.exitcode)
    ''', 'cmp')
    assert r.stdout.splitlines() == ['child made one', 'done 0'], r.stderr


def test_no_fd_or_block_leaks(shm_entries):
    r = run('''
        import os
        from cmp import shared_memory as sm
        def fds():
            return len(os.listdir('/proc/self/fd'))
        sm.SharedMemory(create=True, size=4096).unlink()     # start the tracker
        before = fds()
        for i in range(2000):
            s = sm.SharedMemory(create=True, size=4096)
            a = sm.SharedMemory(s.name)
            a.buf[0] = i % 256
            a.close()
            s.close()
            s.unlink()
        print(fds() - before)
    ''', 'cmp', timeout=120)
    assert r.stdout.strip() == '0', r.stderr
    assert r.stderr == ''


def test_bad_size_leaves_no_block(shm_entries):
    # The stdlib creates the name first and leaks an empty block here.
    r = run('''
        from cmp import shared_memory as sm
        for size in (1.5, '1', None):
            try:
                sm.SharedMemory(create=True, size=size)
            except TypeError as e:
                print('TypeError', e)
    ''', 'cmp')
    assert r.stdout.splitlines() == [
        "TypeError 'float' object cannot be interpreted as an integer",
        "TypeError '>=' not supported between instances of 'str' and 'int'",
        "TypeError '>=' not supported between instances of 'NoneType' and 'int'",
    ], r.stderr


def test_name_with_an_embedded_nul_is_refused(shm_entries):
    # CPython's test_shared_memory_name_with_embedded_null (3.13+). 3.11's
    # stdlib cuts the name at the NUL: it attaches to, and unlinks, another block.
    r = run('''
        from cmp import shared_memory as sm
        s = sm.SharedMemory(create=True, size=16)
        for call in (lambda: sm.SharedMemory(s.name + '\\0x'),
                     lambda: sm.SharedMemory(s.name + '\\0x', create=True, size=16),
                     lambda: sm.SharedMemory(s.name + '\\0x', track=False)):
            try:
                call()
            except ValueError as e:
                print('ValueError', e)
        name, s._name = s._name, s._name + '\\0a'
        try:
            s.unlink()
        except ValueError as e:
            print('ValueError', e)
        s._name = name
        print(sm.SharedMemory(s.name).size >= 16)
        s.unlink()
    ''', 'cmp')
    assert r.stdout.splitlines() == ['ValueError embedded null character'] * 4 + ['True'], r.stderr
