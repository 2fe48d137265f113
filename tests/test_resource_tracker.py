"""resource_tracker (over cmp's C tracker) and heap: the stdlib's API and
the idioms programs use, side by side with the stdlib where they agree."""
import os
import random
import subprocess
import sys
import time
import uuid

import pytest

from cmp import heap, resource_tracker, shared_memory
from support import assert_same, child_env, run, run_both


def _gone(path, seconds=10):
    """Whether path disappears within seconds (a tracker cleans up just
    after its program exits)."""
    deadline = time.monotonic() + seconds
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_unregister_idiom_keeps_the_block():
    # The common idiom: a program that attaches to another's block
    # unregisters it, so that its exit does not remove the block (the 3.11
    # stdlib registers on attach and would).
    block = shared_memory.SharedMemory(create=True, size=16, track=False)
    try:
        std, mine = assert_same('''
            import importlib
            shared_memory = importlib.import_module(mp.__name__ + '.shared_memory')
            resource_tracker = importlib.import_module(mp.__name__ + '.resource_tracker')
            s = shared_memory.SharedMemory(%r)
            resource_tracker.unregister(s._name, 'shared_memory')
            s.buf[0] += 1
            print(s.buf[0])
            s.close()
        ''' % block.name, normalize_output=lambda t: '')
        time.sleep(0.5)     # each tracker has had its chance to (wrongly) unlink
        assert os.path.exists('/dev/shm/' + block.name)
        assert (std.stdout, mine.stdout) == ('1\n', '2\n')
        assert 'leaked' not in std.stderr + mine.stderr
    finally:
        block.close()
        block.unlink()


def test_registered_name_is_unlinked_at_exit_with_the_warning():
    std, mine = assert_same('''
        import importlib
        shared_memory = importlib.import_module(mp.__name__ + '.shared_memory')
        resource_tracker = importlib.import_module(mp.__name__ + '.resource_tracker')
        s = shared_memory.SharedMemory(create=True, size=16)
        resource_tracker.unregister(s._name, 'shared_memory')
        resource_tracker.register(s._name, 'shared_memory')
        print(s.name)
        s.close()
    ''', normalize_output=lambda t: '')
    for r in (std, mine):
        assert _gone('/dev/shm/' + r.stdout.strip()), r.impl
    for r in (std, mine):
        assert 'There appear to be 1 leaked shared_memory objects' in r.stderr, r.stderr


def test_semaphores_are_tracked_too(tmp_path):
    # A named semaphore NAME is the file /dev/shm/sem.NAME (glibc).
    name = '/cmp-test-%s' % uuid.uuid4().hex[:12]
    path = '/dev/shm/sem.' + name[1:]
    r = run('''
        from cmp import resource_tracker
        open(%r, 'wb').close()
        resource_tracker.register(%r, 'semaphore')
        resource_tracker.register('/never-there', 'semaphore')   # nothing to track
    ''' % (path, name))
    try:
        assert r.returncode == 0, r.stderr
        assert _gone(path)
        assert 'There appear to be 1 leaked semaphore objects' in r.stderr, r.stderr
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_unregistered_semaphore_survives():
    name = '/cmp-test-%s' % uuid.uuid4().hex[:12]
    path = '/dev/shm/sem.' + name[1:]
    r = run('''
        from cmp import resource_tracker
        open(%r, 'wb').close()
        resource_tracker.register(%r, 'semaphore')
        resource_tracker.unregister(%r, 'semaphore')
    ''' % (path, name, name))
    try:
        assert r.returncode == 0, r.stderr
        time.sleep(0.5)
        assert os.path.exists(path)
        assert 'leaked' not in r.stderr
    finally:
        os.unlink(path)


def test_api():
    rt = resource_tracker
    assert rt.__all__ == ['ensure_running', 'register', 'unregister']
    rt.ensure_running()
    fd = rt.getfd()
    assert fd == rt._resource_tracker._fd and os.fstat(fd)
    assert rt._resource_tracker._check_alive()
    with pytest.raises(ValueError, match='unknown resource type nope'):
        rt.register('/x', 'nope')
    with pytest.raises(TypeError):
        rt.register(b'/x', 'shared_memory')
    rt.register('/x', 'noop' if sys.version_info < (3, 13) else 'dummy')
    assert set(rt._CLEANUP_FUNCS) >= {'noop', 'semaphore', 'shared_memory'}


def test_main_speaks_the_stdlib_protocol(tmp_path):
    name = '/cmp-test-%s' % uuid.uuid4().hex[:12]
    kept = '/cmp-test-%s' % uuid.uuid4().hex[:12]
    for n in (name, kept):
        open('/dev/shm' + n, 'wb').close()
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, '-c', 'from cmp.resource_tracker import main; main(%d)' % r],
        pass_fds=(r,), stderr=subprocess.PIPE, text=True, env=child_env())
    os.close(r)
    try:
        for line in ('REGISTER:%s:shared_memory' % name, 'REGISTER:%s:shared_memory' % kept,
                     'UNREGISTER:%s:shared_memory' % kept, 'REGISTER:x:bogus'):
            os.write(w, line.encode() + b'\n')
        os.close(w)
        _, err = proc.communicate(timeout=60)
        assert not os.path.exists('/dev/shm' + name)
        assert os.path.exists('/dev/shm' + kept)
        assert 'unknown resource type bogus' in err
        assert 'There appear to be 1 leaked shared_memory objects' in err
        assert proc.returncode == (1 if sys.version_info >= (3, 13) else 0)
    finally:
        for n in (name, kept):
            if os.path.exists('/dev/shm' + n):
                os.unlink('/dev/shm' + n)


# ---------------------------------------------------------------------------
# heap

def test_heap_blocks_tile_the_arenas_and_all_return():
    # The invariant CPython's test_heap checks, on cmp's heap.
    h = heap.BufferWrapper._heap = heap.Heap()
    h._DISCARD_FREE_SPACE_LARGER_THAN = 0
    rnd = random.Random(7)
    blocks = []
    for _ in range(2000):
        blocks.append(heap.BufferWrapper(int(rnd.lognormvariate(0, 1) * 1000)))
        if len(blocks) > 50:
            del blocks[rnd.randrange(50)]
    spans = [(h._arenas.index(a), s, e) for seq in h._len_to_seq.values() for a, s, e in seq]
    spans += [(h._arenas.index(a), s, e) for a, bs in h._allocated_blocks.items() for s, e in bs]
    spans.sort()
    assert sum(e - s for _, s, e in spans) == sum(a.size for a in h._arenas)
    for (a, s, e), (na, ns, ne) in zip(spans, spans[1:]):
        if a == na:
            assert e == ns
        else:
            assert e == h._arenas[a].size and ns == 0
    rnd.shuffle(blocks)
    del blocks[:]
    assert h._n_frees == h._n_mallocs
    assert not h._pending_free_blocks and not h._arenas
    assert not h._allocated_blocks and not h._len_to_seq


def test_buffer_wrapper_is_shared_with_a_forked_child():
    r = run('''
        from cmp import heap
        def child(b):
            b.create_memoryview()[:5] = b'hello'
        if __name__ == '__main__':
            b = heap.BufferWrapper(100)
            p = mp.Process(target=child, args=(b,)); p.start(); p.join()
            print(bytes(b.create_memoryview()[:5]), len(b.create_memoryview()))
            for bad in (-1, sys.maxsize):
                try:
                    heap.BufferWrapper(bad)
                except (ValueError, OverflowError) as e:
                    print(type(e).__name__)
    '''.replace('from cmp import heap', 'import sys\n        from cmp import heap'),
        start_method='fork')
    assert r.stdout == "b'hello' 100\nValueError\nOverflowError\n", r.stdout + r.stderr


def test_arena_pickles_with_its_descriptor_to_a_spawned_child():
    r = run('''
        from cmp import heap
        def child(a):
            a.buffer[:3] = b'abc'
        if __name__ == '__main__':
            a = heap.Arena(4096)
            p = mp.Process(target=child, args=(a,)); p.start(); p.join()
            print(a.buffer[:3], p.exitcode)
    ''', start_method='spawn')
    assert r.stdout == "b'abc' 0\n", r.stdout + r.stderr


def test_a_killed_tracker_is_relaunched_and_keeps_the_registrations():
    r = run('''
        import os, signal, warnings
        from cmp import resource_tracker, shared_memory
        s = shared_memory.SharedMemory(create=True, size=16)
        rt = resource_tracker._resource_tracker
        rt.ensure_running()
        old = rt._pid
        os.kill(old, signal.SIGKILL)
        os.waitpid(old, 0)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            rt.ensure_running()
        print(rt._pid != old, rt._check_alive(), [str(x.message) for x in w])
        for sig in (signal.SIGINT, signal.SIGTERM):     # ignored, as in the stdlib
            os.kill(rt._pid, sig)
        print(s.name)
        s.close()
    ''')
    lines = r.stdout.splitlines()
    assert lines[0] == ("True True ['resource_tracker: process died unexpectedly, "
                        "relaunching.  Some resources might leak.']"), r.stdout + r.stderr
    assert _gone('/dev/shm/' + lines[1])
    assert 'There appear to be 1 leaked shared_memory objects' in r.stderr


def test_too_long_a_name_is_refused():
    # The limit of the stdlib's simple message format (3.15 starts with its
    # JSON one: test_exit_code_and_message_format_as_the_stdlib).
    t = resource_tracker._resource_tracker
    saved = t.__dict__.get('_use_simple_format')
    t._use_simple_format = True
    try:
        with pytest.raises(ValueError, match='msg too long'):
            resource_tracker.register('a' * (512 - len('shared_memory')), 'shared_memory')
        resource_tracker.register('/' + 'a' * 300, 'shared_memory')   # cannot exist: nothing to do
    finally:
        if saved is None:
            del t._use_simple_format
        else:
            t._use_simple_format = saved


def test_exit_code_and_message_format_as_the_stdlib():
    # CPython's test_resource_tracker_exit_code, and the names 3.13+'s tests patch.
    assert_same('''
        rt = __import__(mp.__name__ + '.resource_tracker', fromlist=['x'])
        for cleanup in (True, False):
            t = rt.ResourceTracker()
            t.ensure_running()
            print(getattr(t, '_exitcode', 'absent'), getattr(t, '_use_simple_format', 'absent'))
            t.register('somename', 'dummy' if hasattr(rt, 'cleanup_noop') else 'noop')
            if cleanup:
                t.unregister('somename', 'dummy' if hasattr(rt, 'cleanup_noop') else 'noop')
            print(t._check_alive(), getattr(t, '_exitcode', 'absent'))
            t._stop()
            print(getattr(t, '_exitcode', 'absent'))
        t = rt._resource_tracker
        if hasattr(t, '_use_simple_format'):
            t._use_simple_format = False
        try:
            t.register('a' * 300, 'shared_memory')
        except ValueError as e:
            print(e)
    ''')


def test_a_tracker_killed_is_relaunched_where_the_stdlib_registers():
    # CPython's test_resource_tracker_sigkill: a lock of a spawn context (named,
    # and registered, in the stdlib) finds the tracker dead and warns; so does
    # creating a block, which the new tracker then cleans up.
    r = assert_same('''
        import os, signal, warnings
        rt = __import__(mp.__name__ + '.resource_tracker', fromlist=['x'])
        shared_memory = __import__(mp.__name__ + '.shared_memory', fromlist=['x'])
        t = rt._resource_tracker
        def kill_tracker():
            t.ensure_running()
            os.kill(t._pid, signal.SIGKILL)
            os.waitpid(t._pid, 0)
        def warned(make):
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter('always')
                obj = make()
            return obj, [str(x.message)[:30] for x in w]
        kill_tracker()
        print(warned(lambda: mp.get_context('fork').Lock())[1])
        print(warned(lambda: mp.get_context('spawn').Lock())[1])
        kill_tracker()
        s, w = warned(lambda: shared_memory.SharedMemory(create=True, size=16))
        print(w)
        print(s.name, flush=True)
        s.close()
    ''', normalize_output=lambda out: out.rsplit('\n', 2)[0])[1]
    assert _gone('/dev/shm/' + r.stdout.splitlines()[-1].lstrip('/'))
    assert 'There appear to be 1 leaked shared_memory objects' in r.stderr


def test_a_tracker_started_by_a_block_is_relaunched_when_killed():
    # Creating a block starts the tracker (as the stdlib's register() does);
    # killed, it is relaunched, with the warning, at the next lock of a spawn
    # context, and the first block is still cleaned up. (Only the output is
    # compared: 3.13's stdlib tracker, relaunched, prints a KeyError for the
    # lock's semaphore at exit.)
    std, r = run_both('''
        import os, signal, warnings
        rt = __import__(mp.__name__ + '.resource_tracker', fromlist=['x'])
        shared_memory = __import__(mp.__name__ + '.shared_memory', fromlist=['x'])
        t = rt._resource_tracker
        s = shared_memory.SharedMemory(create=True, size=16)
        print(t._pid is not None)
        os.kill(t._pid, signal.SIGKILL)
        os.waitpid(t._pid, 0)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            mp.get_context('spawn').Lock()
        print([str(x.message)[:30] for x in w])
        print(s.name, flush=True)
        s.close()
    ''')
    assert std.stdout.splitlines()[:2] == ['True', "['resource_tracker: process died']"], std.stderr
    assert r.stdout.splitlines()[:2] == std.stdout.splitlines()[:2], r.stdout + r.stderr
    assert r.returncode == 0, r.stderr
    assert _gone('/dev/shm/' + r.stdout.splitlines()[-1].lstrip('/'))
    assert 'There appear to be 1 leaked shared_memory objects' in r.stderr


@pytest.mark.parametrize('method', ['spawn', 'forkserver'])
def test_a_child_started_afresh_shares_its_parents_tracker(method):
    # CPython's test_resource_tracker_reused, and what it is for: a block the
    # child leaves registered is cleaned up when the program ends, not when
    # the child exits (the parent may still be using it).
    std, mine = assert_same('''
        import importlib, os, time
        shared_memory = importlib.import_module(mp.__name__ + '.shared_memory')
        rt = importlib.import_module(mp.__name__ + '.resource_tracker')
        def child(conn):
            rt._resource_tracker.ensure_running()
            s = shared_memory.SharedMemory(create=True, size=16)
            conn.send((rt._resource_tracker._pid, rt._resource_tracker._check_alive(), s.name))
            s.close()
        if __name__ == '__main__':
            rt.ensure_running()
            pid = rt._resource_tracker._pid
            r, w = mp.Pipe(duplex=False)
            p = mp.Process(target=child, args=(w,))
            p.start()
            child_pid, alive, name = r.recv()
            p.join()
            time.sleep(0.5)     # a tracker of the child's own has had its chance to unlink
            print(child_pid in (None, pid) and alive, p.exitcode)
            print(os.path.exists('/dev/shm/' + name.lstrip('/')))
            print(child_pid == pid, name, flush=True)
    ''', start_method=method, normalize_output=lambda out: out.rsplit('\n', 2)[0])
    assert std.stdout.startswith('True 0\nTrue\n'), std.stdout + std.stderr
    same_pid, name = mine.stdout.splitlines()[-1].split()
    assert same_pid == 'True', mine.stdout      # the stdlib's child leaves _pid None
    for r in (std, mine):
        name = r.stdout.splitlines()[-1].split()[1]
        assert _gone('/dev/shm/' + name.lstrip('/')), r.impl
        assert 'There appear to be 1 leaked shared_memory objects' in r.stderr, r.stderr


def test_a_fork_server_child_uses_the_tracker_relaunched_after_the_server_started():
    """The fork server shares the tracker of the program that started it
    with every child; once that tracker was killed and relaunched, a child
    is handed the new one and uses it instead (a block it leaves is cleaned
    up by the new tracker at the end)."""
    r = run('''
        import os, signal, time, warnings
        from cmp import resource_tracker, shared_memory
        rt = resource_tracker._resource_tracker
        def child(conn):
            s = shared_memory.SharedMemory(create=True, size=16)
            conn.send((rt._pid, s.name))
            s.close()
        def start():
            r, w = mp.Pipe(duplex=False)
            p = mp.Process(target=child, args=(w,))
            p.start()
            pid, name = r.recv()
            p.join()
            return pid, name, p.exitcode
        if __name__ == '__main__':
            rt.ensure_running()
            first = rt._pid
            pid, name, code = start()
            print(pid == first, code)
            os.kill(first, signal.SIGKILL)
            os.waitpid(first, 0)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                rt.ensure_running()
            for _ in range(2):
                pid, name, code = start()
                print(pid == rt._pid != first, code)
            print(name, flush=True)
    ''', 'cmp', start_method='forkserver')
    lines = r.stdout.splitlines()
    assert lines[:3] == ['True 0', 'True 0', 'True 0'], r.stdout + r.stderr
    assert _gone('/dev/shm/' + lines[3].lstrip('/'))
    assert 'leaked shared_memory objects' in r.stderr, r.stderr


def test_attaching_refuses_what_is_not_a_tracker():
    r = run('''
        import errno, os
        from cmp import _core, resource_tracker
        r, w = os.pipe()
        try:
            _core.tracker_attach(r, w, os.getpid())     # a pipe is no table
        except OSError as e:
            print(e.errno == errno.EINVAL)
        for fd in (r, w):                               # both taken over: closed
            try:
                os.fstat(fd)
            except OSError as e:
                print(e.errno == errno.EBADF)
        resource_tracker.ensure_running()               # starts its own
        print(resource_tracker._resource_tracker._check_alive())
    ''')
    assert r.stdout == 'True\nTrue\nTrue\nTrue\n', r.stdout + r.stderr
