"""Process and the process-level functions, against the stdlib, under every
start method."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from support import assert_same, child_env, run

METHODS = ['fork', 'spawn', 'forkserver']


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


def test_target_args_kwargs_and_names(method):
    assert_same('''
        import os
        def f(a, b=None):
            p = mp.current_process()
            print('child', a, b, p.name, mp.parent_process().name, p.daemon)
        if __name__ == '__main__':
            ps = [mp.Process(target=f, args=(i,), kwargs={'b': 'x'}) for i in range(3)]
            ps.append(mp.Process(target=f, args=(9,), name='named', daemon=True))
            print([p.name for p in ps], [p.exitcode for p in ps], [p.pid for p in ps])
            for p in ps:
                p.start()
                p.join()
            print([p.exitcode for p in ps], [p.is_alive() for p in ps])
            print(mp.parent_process(), mp.current_process().name)
    ''', start_method=method)


def test_nested_names_and_subclass(method):
    assert_same('''
        class Worker(mp.Process):
            def __init__(self, tag):
                super().__init__()
                self.tag = tag
            def run(self):
                print('run', self.tag, self.name, mp.current_process().name)
                if self.tag == 'outer':
                    inner = Worker('inner')
                    inner.start()
                    inner.join()
                    print('inner', inner.name, inner.exitcode)
        if __name__ == '__main__':
            w = Worker('outer')
            w.start()
            w.join()
            print(w.exitcode, repr(w))
    ''', start_method=method)


@pytest.mark.parametrize('body, name', [
    ('pass', 'return'),
    ('raise ValueError("boom")', 'exception'),
    ('sys.exit()', 'exit-none'),
    ('sys.exit(0)', 'exit-0'),
    ('sys.exit(3)', 'exit-3'),
    ('sys.exit(300)', 'exit-300'),
    ('sys.exit(-1)', 'exit-minus-1'),
    ('sys.exit("bye")', 'exit-str'),
    ('os._exit(5)', 'os-exit'),
    ('raise KeyboardInterrupt', 'keyboard-interrupt'),
    ('os.kill(os.getpid(), signal.SIGKILL)', 'self-kill'),
])
def test_exit_codes_and_stderr(method, body, name):
    # Twice: under forkserver the second child is the server's spare, which
    # tells its exit code itself.
    std, mine = assert_same('''
        import os, signal, sys
        def f():
            %s
        if __name__ == '__main__':
            for _ in range(2):
                p = mp.Process(target=f)
                p.start()
                p.join()
                print(p.exitcode, repr(p))
    ''' % body, start_method=method)
    # The child's report: "Process Process-1:", the traceback, the message.
    first = lambda r: r.stderr.splitlines()[:1]
    assert first(mine) == first(std)
    assert mine.stderr.splitlines()[-1:] == std.stderr.splitlines()[-1:]


def test_terminate_kill_and_reprs(method):
    assert_same('''
        import time
        if __name__ == '__main__':
            a = mp.Process(target=time.sleep, args=(30,))
            b = mp.Process(target=time.sleep, args=(30,), daemon=True)
            print(repr(a))
            a.start(); b.start()
            print(a.is_alive(), b.is_alive(), a.exitcode)
            a.join(0.05)
            print(a.is_alive(), a.exitcode)
            a.terminate(); b.kill()
            a.join(); b.join()
            print(a.exitcode, b.exitcode, repr(a), repr(b))
            print(a.is_alive(), mp.active_children())
            a.terminate()   # harmless once it has ended
            a.close()
            print(repr(a))
            for attr in ('pid', 'exitcode', 'sentinel'):
                try:
                    getattr(a, attr)
                except ValueError as e:
                    print(attr, 'ValueError', e)
    ''', start_method=method)


def test_api_errors(method):
    assert_same('''
        import time
        def attempt(f):
            try:
                r = f()
                print('ok', r)
            except Exception as e:
                print(type(e).__name__, e)
        if __name__ == '__main__':
            p = mp.Process(target=time.sleep, args=(30,))
            attempt(lambda: p.join())
            attempt(lambda: p.is_alive())
            attempt(lambda: p.sentinel)
            attempt(lambda: mp.Process(group=1))
            attempt(lambda: setattr(p, 'name', 3))
            p.start()
            attempt(p.start)
            attempt(lambda: setattr(p, 'daemon', True))
            attempt(p.close)
            p.kill(); p.join()
            p.close(); p.close()
            attempt(p.start)
            attempt(p.is_alive)
            attempt(p.join)
            attempt(lambda: p.name)
            attempt(lambda: mp.get_context('nope'))
            attempt(lambda: mp.set_start_method('fork'))
            attempt(lambda: mp.get_context().set_start_method('fork'))
            print(mp.get_all_start_methods(), mp.get_start_method(allow_none=True))
            print(mp.cpu_count() >= 1)
            import pickle
            attempt(lambda: pickle.dumps(mp.Process()))
    ''', start_method=method)


def test_daemon_cannot_have_children(method):
    std, mine = assert_same('''
        def inner():
            pass
        def outer():
            mp.Process(target=inner).start()
        if __name__ == '__main__':
            p = mp.Process(target=outer, daemon=True)
            p.start()
            p.join()
            print(p.exitcode)
    ''', start_method=method)
    assert 'AssertionError: daemonic processes are not allowed to have children' in mine.stderr


def test_exit_joins_children_and_terminates_daemons(method):
    assert_same('''
        import time
        def slow(tag):
            time.sleep(0.5)
            print(tag, 'finished', flush=True)
        if __name__ == '__main__':
            mp.Process(target=slow, args=('normal',)).start()
            mp.Process(target=slow, args=('daemon',), daemon=True).start()
            print('main done', flush=True)
    ''', start_method=method)


def test_sentinel_and_join_timeout(method):
    assert_same('''
        import select, time
        if __name__ == '__main__':
            p = mp.Process(target=time.sleep, args=(0.3,))
            p.start()
            r, _, _ = select.select([p.sentinel], [], [], 0)
            print('ready early', bool(r))
            t = time.monotonic(); p.join(0.05); waited = time.monotonic() - t
            print('join timeout returned alive', p.is_alive(), waited >= 0.05)
            r, _, _ = select.select([p.sentinel], [], [], 10)
            print('ready at end', bool(r))
            p.join()
            print(p.exitcode)
    ''', start_method=method)


def test_child_stdin_is_devnull(method):
    assert_same('''
        import sys
        def f():
            print('read', repr(sys.stdin.read()))
        if __name__ == '__main__':
            p = mp.Process(target=f)
            p.start(); p.join()
    ''', start_method=method, stdin='typed by the user\n')


def test_buffered_output_not_duplicated(method):
    # stdout is a pipe here, so block-buffered: unflushed text must not be
    # copied into the child by fork.
    assert_same('''
        import sys
        def f():
            print('child')
        if __name__ == '__main__':
            print('before', end=' ')
            sys.stderr.write('err-before ')
            p = mp.Process(target=f)
            p.start(); p.join()
            print('after')
    ''', start_method=method)


def test_register_at_fork_hooks_run():
    assert_same('''
        import os
        os.register_at_fork(before=lambda: print('before', flush=True),
                            after_in_parent=lambda: print('parent', flush=True),
                            after_in_child=lambda: print('child', flush=True))
        if __name__ == '__main__':
            p = mp.Process(target=print, args=('target',))
            p.start(); p.join()
    ''', start_method='fork', normalize_output=lambda t: sorted(t.splitlines()))
    # (sorted: the parent's hook and the child's lines race by nature)


def test_active_children_reaps():
    mine = run('''
        import os, time
        if __name__ == '__main__':
            p = mp.Process(target=time.sleep, args=(0.1,))
            p.start()
            print(len(mp.active_children()))
            time.sleep(0.5)
            print(len(mp.active_children()))
            # reaped: no zombie left behind
            with open('/proc/%d/status' % os.getpid()) as f:
                pass
            try:
                os.waitpid(p.pid, os.WNOHANG)
                print('zombie')
            except ChildProcessError:
                print('reaped')
    ''', 'cmp')
    assert mine.stdout.split() == ['1', '0', 'reaped'], mine.stderr


def test_context_objects(method):
    assert_same('''
        ctx = mp.get_context(%r)
        def f(x):
            print('in', x, mp.current_process().name)
        if __name__ == '__main__':
            p = ctx.Process(target=f, args=(1,))
            print(type(p).__name__, ctx.get_start_method())
            p.start(); p.join()
            print(p.exitcode, mp.get_start_method(allow_none=True))
    ''' % method)


def test_logging_to_stderr():
    std, mine = assert_same('''
        import logging
        if __name__ == '__main__':
            logger = mp.log_to_stderr(logging.INFO)
            print(logger.name, logger is mp.get_logger(), logger.level)
            p = mp.Process(target=print, args=('hi',))
            p.start(); p.join()
    ''', start_method='fork')
    assert '[INFO/Process-1] child process calling self.run()' in mine.stderr


@pytest.mark.parametrize('method', METHODS)
def test_daemon_dies_with_killed_parent(method, tmp_path):
    """The stdlib leaves daemonic children running when the parent is
    SIGKILLed; cmp's die with it."""
    pidfile = tmp_path / 'daemon.pid'
    script = textwrap.dedent('''
        import os, sys, time, threading
        import cmp as mp
        def daemon(path):
            with open(path, 'w') as f:
                f.write(str(os.getpid()))
            time.sleep(60)
        def start(method, path):
            mp.get_context(method).Process(target=daemon, args=(path,), daemon=True).start()
        if __name__ == '__main__':
            method, path, from_thread = sys.argv[1], sys.argv[2], sys.argv[3] == '1'
            if from_thread:   # the forking thread ends long before the process
                t = threading.Thread(target=start, args=(method, path)); t.start(); t.join()
            else:
                start(method, path)
            print('started', flush=True)
            time.sleep(60)
    ''')
    path = tmp_path / 'parent.py'
    path.write_text(script)
    for from_thread in ('0', '1'):
        if pidfile.exists():
            pidfile.unlink()
        parent = subprocess.Popen([sys.executable, str(path), method, str(pidfile), from_thread],
                                  stdout=subprocess.PIPE, env=child_env(), cwd=tmp_path)
        try:
            assert parent.stdout.readline() == b'started\n'
            deadline = time.monotonic() + 10
            while not pidfile.exists() or not pidfile.read_text():
                assert time.monotonic() < deadline, 'daemon never started'
                time.sleep(0.02)
            daemon_pid = int(pidfile.read_text())
            if from_thread == '1':
                time.sleep(0.3)
                assert _running(daemon_pid), 'daemon died with the thread that started it'
            parent.send_signal(signal.SIGKILL)
            parent.wait()
            deadline = time.monotonic() + 5
            while _running(daemon_pid):
                assert time.monotonic() < deadline, 'daemon outlived its parent'
                time.sleep(0.02)
        finally:
            parent.kill()
            parent.wait()
            parent.stdout.close()


def _running(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
        return state != 'Z'
    except FileNotFoundError:
        return False


def test_no_leaks_across_many_children(method):
    """Sentinels, pids and zombies are released: after many start/join
    cycles the process holds the descriptors and children it held before."""
    r = run('''
        import gc, os
        def f():
            pass
        def fds():
            # A spawn spare (a waiting interpreter) holds two descriptors.
            from cmp.popen_spawn_posix import _spare
            return len(os.listdir('/proc/self/fd')) - 2 * len(_spare._spares)
        def zombies():
            n = 0
            for pid in os.listdir('/proc'):
                if pid.isdigit():
                    try:
                        with open('/proc/%s/stat' % pid) as fh:
                            fields = fh.read().rsplit(')', 1)[1].split()
                    except OSError:
                        continue
                    if fields[0] == 'Z' and int(fields[1]) == os.getpid():
                        n += 1
            return n
        if __name__ == '__main__':
            p = mp.Process(target=f); p.start(); p.join()   # warm-up (fork server)
            del p; gc.collect()
            before = fds()
            for i in range(60):
                p = mp.Process(target=f)
                p.start()
                if i % 2:
                    p.join()
                else:
                    while p.is_alive():
                        pass
            del p
            gc.collect()
            print(fds() - before, zombies(), len(mp.active_children()))
    ''', 'cmp', start_method=method, timeout=120)
    assert r.stdout.split() == ['0', '0', '0'], r.stdout + r.stderr


def test_forkserver_refuses_strangers():
    """The fork server forks only for requests that carry its key: a wrong
    key, garbage or a silent connection is closed, and the server goes on
    serving its program."""
    r = run('''
        import os, socket
        from cmp import _core, forkserver
        def f():
            print('child ran')
        if __name__ == '__main__':
            p = mp.Process(target=f); p.start(); p.join()
            fs = forkserver._forkserver
            try:
                _core.forkserver_request(fs._address, fs._listener_pid, bytes(32), b'x', [])
            except ConnectionResetError:
                print('wrong key refused')
            silent = socket.socket(socket.AF_UNIX)
            silent.connect(fs._address)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(fs._address)
                s.sendall(b'garbage' * 20)
                try:
                    print('garbage refused', s.recv(8) == b'')
                except ConnectionResetError:
                    print('garbage refused', True)
            try:
                _core.forkserver_request(fs._address, os.getpid() + 1, fs._forkserver_authkey, b'x', [])
            except ConnectionRefusedError:
                print('wrong listener refused')
            p = mp.Process(target=f); p.start(); p.join()
            silent.close()
            print(p.exitcode)
    ''', 'cmp', start_method='forkserver')
    # The children's lines and the parent's (buffered: a pipe) interleave.
    assert sorted(r.stdout.splitlines()) == sorted([
        'child ran', 'wrong key refused', 'garbage refused True',
        'wrong listener refused', 'child ran', '0']), r.stdout + r.stderr


@pytest.mark.parametrize('early', [True, False], ids=['before-first-start', 'after'])
def test_log_to_stderr_reaches_a_child_once(method, early):
    """A child of a program that logs to stderr does too, with one handler
    (a fork server's child once had the server's and its own), whether
    logging was turned on before the first start or after it."""
    assert_same('''
        import logging, sys
        def f():
            print(len(mp.get_logger().handlers), mp.get_logger().level)
        if __name__ == '__main__':
            early = sys.argv[1] == 'True'
            if early:
                mp.log_to_stderr(logging.WARNING)
            p = mp.Process(target=f); p.start(); p.join()
            if not early:
                mp.log_to_stderr(logging.WARNING)
            for _ in range(2):
                p = mp.Process(target=f); p.start(); p.join()
    ''', start_method=method, args=(str(early),))


def test_forkserver_main_module_that_fails_to_import():
    """A main module that cannot be imported as a module (here it raises;
    a program piped to `python -` has no file to import): before 3.13 the
    stdlib's server never imports it and each child fails importing it; on
    3.13 and 3.14 the server fails and start() says so; from 3.15 the
    server goes on without it (on_error='ignore'). cmp's server imports the
    main module on 3.11 too, and does the same as the stdlib on each."""
    assert_same('''
        if __name__ != '__main__':
            raise RuntimeError('not importable as a module')
        p = mp.get_context('forkserver').Process(target=print, args=('child ran',))
        try:
            p.start()
        except Exception as e:
            print('start raised', type(e).__name__)
        else:
            p.join()
            print('exit code', p.exitcode)
    ''')


def test_forkserver_spare():
    """After its first child the fork server keeps one forked ahead (a
    spare) and hands it the next request: each child still has its own pid,
    exit code and arguments; a spare killed while it waits is replaced by a
    fork for the next request; and the spare left when the program ends
    exits with the server."""
    r = run('''
        import os, signal, time
        from cmp import forkserver
        def f(q, code):
            q.put(os.getpid())
            raise SystemExit(code)
        def kids(server):
            with open('/proc/%d/task/%d/children' % (server, server)) as fh:
                return [int(k) for k in fh.read().split()]
        def waiting(server, ended=()):
            # the server's children that run no Process: its spare (a child
            # that ended may still be there a moment after join() returned)
            deadline = time.monotonic() + 10
            while ((not kids(server) or set(kids(server)) & set(ended))
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            return kids(server)
        if __name__ == '__main__':
            q = mp.SimpleQueue()
            def start(code):
                p = mp.Process(target=f, args=(q, code))
                p.start()
                p.join()
                return p.pid, q.get(), p.exitcode
            pid, seen, exitcode = start(3)
            print(seen == pid, exitcode)
            server = forkserver._forkserver._server_pid
            for code in (0, 7, -1):
                spare = waiting(server, [pid])
                pid, seen, exitcode = start(code)
                print(spare == [pid], seen == pid, exitcode == code % 256)
            spare = waiting(server, [pid])
            os.kill(spare[0], signal.SIGKILL)
            while kids(server) == spare:        # until the server reaps it
                time.sleep(0.01)
            pid, seen, exitcode = start(5)
            print(pid != spare[0], seen == pid, exitcode)
            print('spare', waiting(server, [pid])[0], flush=True)
    ''', 'cmp', start_method='forkserver')
    lines = r.stdout.splitlines()
    assert lines[:5] == ['True 3'] + ['True True True'] * 3 + ['True True 5'], r.stdout + r.stderr
    spare = int(lines[5].split()[1])
    deadline = time.monotonic() + 10
    while os.path.exists('/proc/%d' % spare) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists('/proc/%d' % spare), 'the spare outlived its program'


def test_join_returns_once_the_child_let_go(method):
    """When join() returns, what the child held is released: a lock it took
    on a file (and never let go of) is free. Under forkserver most of these
    children are spares, which tell their exit code before the kernel has
    freed their memory, but only after closing their descriptors."""
    assert_same('''
        import fcntl, sys
        held = []
        def hold(path, code):
            held.append(open(path, 'w'))        # open until the process ends
            fcntl.flock(held[-1], fcntl.LOCK_EX)
            sys.exit(code)
        if __name__ == '__main__':
            seen = []
            for i in range(20):
                p = mp.Process(target=hold, args=('lockfile', i % 3))
                p.start()
                p.join()
                with open('lockfile') as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        seen.append((p.exitcode, 'free'))
                    except BlockingIOError:
                        seen.append((p.exitcode, 'held'))
            print(seen)
    ''', start_method=method)


def test_join_waits_for_the_child_not_a_process_it_forked(method):
    """A process its target forks with os.fork() and that leaves the target
    ends in the child's own exit path: it must not pass for the child
    (whose exit code a spare of the fork server tells itself)."""
    assert_same('''
        import os, sys, time
        def f(path):
            pid = os.fork()
            if pid == 0:
                return                  # the grandchild leaves at once
            os.waitpid(pid, 0)
            time.sleep(0.2)
            open(path, 'w').close()
            sys.exit(5)
        if __name__ == '__main__':
            for _ in range(3):
                p = mp.Process(target=f, args=('done',))
                p.start()
                p.join()
                print(p.exitcode, os.path.exists('done'))
                os.unlink('done')
    ''', start_method=method)


def test_forkserver_killed_after_start_loses_no_child():
    """A child whose pid start() returned runs even if the fork server is
    killed at once: the server's spare answers with its pid only once it has
    the request. The stdlib's join() then returns at once with 255 (the exit
    code is lost with the server) while the child runs on (and the stdlib
    itself fails now and then in this loop); a child that was cmp's spare
    tells its exit code itself, so join() waits for it and gets it."""
    r = run('''
        import os, signal, time
        from cmp import forkserver
        def touch(path):
            time.sleep(0.05)
            open(path, 'w').close()
        if __name__ == '__main__':
            for i in range(8):
                warm = mp.Process(target=time.sleep, args=(0,))
                warm.start()            # (the server's first child: then a spare)
                warm.join()
                p = mp.Process(target=touch, args=('ran-%d' % i,))
                p.start()
                os.kill(forkserver._forkserver._forkserver_pid, signal.SIGKILL)
                p.join()
                print(i, p.exitcode, os.path.exists('ran-%d' % i))
    ''', 'cmp', start_method='forkserver')
    assert r.stdout.splitlines() == ['%d 0 True' % i for i in range(8)], r.stdout + r.stderr
    assert r.returncode == 0, r.stderr


def test_spawn_sees_the_state_at_start(tmp_path):
    """A spawned child starts from what the parent is at start(), also when
    a spare interpreter was waiting: environment, working directory, umask,
    ignored signals, and descriptor 1 redirected between starts."""
    out = tmp_path / 'out.txt'
    assert_same('''
        import os, signal, sys
        def f(tag):
            print(tag, os.environ.get('CMP_T'), os.path.basename(os.getcwd()) == 'sub',
                  oct(os.umask(0)), signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
                  os.path.basename(sys.argv[0]), flush=True)
        if __name__ == '__main__':
            ctx = mp.get_context('spawn')
            def start(tag):
                p = ctx.Process(target=f, args=(tag,)); p.start(); p.join()
            start('plain')
            start('again')                  # a spare may be waiting by now
            os.environ['CMP_T'] = 'set'
            start('env')
            os.mkdir('sub'); os.chdir('sub')
            start('cwd')
            os.umask(0o077)
            start('umask')
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
            start('sigign')
            sys.stdout.flush()
            saved = os.dup(1)
            fd = os.open(%r, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            start('redirected')
            os.dup2(saved, 1)
            start('back')
            with open(%r) as fh:
                print('file:', fh.read().split())
    ''' % (str(out), str(out)))


def test_child_atexit_handlers(method):
    # From 3.12 a fork or forkserver child runs what its target registered
    # with atexit, and never its parent's handlers (CPython's test_atexit).
    assert_same('''
        import atexit
        def f():
            atexit.register(print, 'child handler', flush=True)
        if __name__ == '__main__':
            atexit.register(print, 'parent handler', flush=True)
            p = mp.Process(target=f)
            p.start()
            p.join()
            print('exitcode', p.exitcode, flush=True)
    ''', start_method=method)


def test_forkserver_refuses_a_wrong_key():
    # CPython's test_forkserver_without_auth_fails: a request with a key that
    # is not the server's raises AuthenticationError, and the server goes on.
    r = run('''
        import sys
        from cmp import forkserver
        if __name__ == '__main__':
            mp.set_start_method('forkserver')
            server = forkserver._forkserver
            server.ensure_running()
            key = server._forkserver_authkey
            server._forkserver_authkey = b'T' * len(key)
            try:
                mp.Process(target=sys.exit).start()
            except mp.AuthenticationError as e:
                print('refused:', e)
            server._forkserver_authkey = key
            p = mp.Process(target=sys.exit, args=(3,))
            p.start()
            p.join()
            print('exitcode', p.exitcode)
    ''')
    assert (r.returncode, r.stdout) == (0, "refused: digest sent was rejected\nexitcode 3\n"), r


def test_child_sys_path_empty_entry(method):
    # '' (the current directory) reaches a spawn or forkserver child as the
    # directory the parent started in (CPython's test_child_sys_path).
    assert_same('''
        import os, sys
        def f():
            print(sys.path[0] == os.getcwd(), '' in sys.path, flush=True)
        if __name__ == '__main__':
            sys.path.insert(0, '')
            p = mp.Process(target=f)
            p.start()
            p.join()
    ''', start_method=method)


def test_child_signal_mask_and_sigint(method):
    # A child starts with nothing blocked and SIGINT handled as in its parent,
    # whatever cmp's helpers (fork server, resource tracker) block or ignore
    # while they start (CPython's test_wait_result and test_interrupt need it).
    assert_same('''
        import signal
        def state():
            with open('/proc/self/status') as f:
                masks = dict(line.split(':\\t') for line in f if line.startswith('Sig'))
            return (masks['SigBlk'].strip(), int(masks['SigIgn'], 16) >> (signal.SIGINT - 1) & 1,
                    signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        def f():
            print('child', *state(), flush=True)
        if __name__ == '__main__':
            import importlib
            shm = importlib.import_module(mp.__name__ + '.shared_memory').SharedMemory(
                create=True, size=16)       # starts the resource tracker
            for _ in range(2):
                p = mp.Process(target=f)
                p.start()
                p.join()
            shm.close()
            shm.unlink()
            print('parent', *state(), flush=True)
    ''', start_method=method)
