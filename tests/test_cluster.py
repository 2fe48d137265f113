"""Pool and ProcessPoolExecutor programs, unmodified, on a Dask or Ray cluster.

The clusters are started here, as separate processes, on loopback: a Dask
scheduler with two workers of one thread (one of them, where the sandbox
allows it, in a network namespace of its own, reached through a veth pair:
a second host), and a Ray head with 2 CPUs. Programs run under
`python -m cmp --cluster ADDRESS` and their output is compared with the same
program's under plain `python -m cmp`. Every process and namespace is torn
down, even when a test fails; everything runs under timeouts. A test whose
engine is not installed (the extras cmp[dask], cmp[ray]) is skipped.
"""
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from support import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
NOTES = os.path.join(HERE, 'notes')
ENGINES = {'dask': 'distributed', 'ray': 'ray'}
START = 120             # seconds a cluster may take to come up (the machine is shared)


def have(engine):
    return importlib.util.find_spec(ENGINES[engine]) is not None


def _stop(proc):
    """Stop a process we started in its own session, and its whole group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(5)
            break
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)     # what outlived its leader


def _start(cmd, env, log):
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _read(path):
    with open(path, errors='replace') as f:
        return f.read()


def _wait_until(ready, what, procs, logs):
    deadline = time.monotonic() + START
    while not ready():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            text = ''.join(_read(log.name)[-3000:] for log in logs)
            pytest.fail('%s: %s\n%s' % (what, 'a process exited' if dead else 'timed out', text))
        time.sleep(0.2)


# ---------------------------------------------------------------------------
# A second "host": a network namespace joined to this one by a veth pair

class NetNS:
    def __init__(self):
        n = os.getpid()
        self.name = 'cmpcl%d' % n
        self.veth = ('cmpc%da' % n, 'cmpc%db' % n)
        base = (n & 63) << 2                            # a /30 of our own
        self.net = '10.213.%d.' % ((n >> 6) & 255)
        self.host, self.peer = self.net + str(base + 1), self.net + str(base + 2)

    def _ip(self, *args, ns=False):
        cmd = (['ip', 'netns', 'exec', self.name] if ns else []) + ['ip', *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    def up(self):
        self._ip('netns', 'add', self.name)
        try:
            a, b = self.veth
            self._ip('link', 'add', a, 'type', 'veth', 'peer', 'name', b)
            self._ip('link', 'set', b, 'netns', self.name)
            self._ip('addr', 'add', self.host + '/30', 'dev', a)
            self._ip('link', 'set', a, 'up')
            self._ip('addr', 'add', self.peer + '/30', 'dev', b, ns=True)
            self._ip('link', 'set', b, 'up', ns=True)
            self._ip('link', 'set', 'lo', 'up', ns=True)
        except BaseException:
            self.down()
            raise

    def down(self):
        # Deleting the namespace deletes its end of the pair, and so both.
        subprocess.run(['ip', 'netns', 'del', self.name], capture_output=True, timeout=30)
        subprocess.run(['ip', 'link', 'del', self.veth[0]], capture_output=True, timeout=30)

    def prefix(self):
        return ['ip', 'netns', 'exec', self.name]


@contextlib.contextmanager
def _maybe_netns():
    ns = NetNS()
    try:
        ns.up()
    except (OSError, subprocess.SubprocessError):
        yield None
        return
    try:
        yield ns
    finally:
        ns.down()


# ---------------------------------------------------------------------------
# The clusters

@pytest.fixture(scope='module')
def dask_cluster(tmp_path_factory):
    """(address, env): a Dask scheduler and two one-thread workers, one of
    them in its own network namespace where possible. Like the local clusters
    cmp starts, the scheduler retries no task whose worker died."""
    if not have('dask'):
        pytest.skip('distributed is not installed (pip install cmp[dask])')
    d = tmp_path_factory.mktemp('dask')
    env = child_env({'DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES': '0'})
    env.pop('CMP_CLUSTER', None)
    procs, logs = [], []
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(_maybe_netns())
        host = ns.host if ns else '127.0.0.1'
        sfile = str(d / 'scheduler.json')

        def start(name, cmd, prefix=()):
            log = stack.enter_context(open(d / (name + '.log'), 'w'))
            logs.append(log)
            p = _start([*prefix, sys.executable, '-m', *cmd], env, log)
            procs.append(p)
            stack.callback(_stop, p)

        start('scheduler', ['distributed.cli.dask_scheduler', '--host', host, '--port', '0',
                            '--no-dashboard', '--dashboard-address', host + ':0',
                            '--scheduler-file', sfile])
        _wait_until(lambda: os.path.exists(sfile), 'dask scheduler', procs, logs)
        time.sleep(0.5)     # the file is written whole, then read
        import json
        address = json.loads(_read(sfile))['address']
        worker = ['distributed.cli.dask_worker', address, '--nthreads', '1', '--no-dashboard']
        start('worker-1', worker + ['--host', host])
        if ns:
            start('worker-2', worker + ['--host', ns.peer], prefix=ns.prefix())
            SECOND_HOST['interface'] = ns.veth[1]
        else:
            start('worker-2', worker + ['--host', host])
        _wait_until(lambda: _count(logs, 'Starting established connection') >= 2,
                    'dask workers', procs, logs)
        yield address, env


SECOND_HOST = {}     # the dask worker in a namespace of its own: its interface


def _count(logs, text):
    return sum(_read(log.name).count(text) for log in logs)


@pytest.fixture(scope='module')
def ray_cluster(tmp_path_factory):
    """(address, env): a Ray head with 2 CPUs, on loopback only; programs
    join it with --cluster ray (RAY_ADDRESS)."""
    if not have('ray'):
        pytest.skip('ray is not installed (pip install cmp[ray])')
    d = tempfile.mkdtemp(prefix='cmpray')       # short: Ray puts sockets in it
    port = _free_port()
    env = child_env({'RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER': '0',   # loopback, not eth0
                     'RAY_AUTH_MODE': 'disabled', 'RAY_USAGE_STATS_ENABLED': '0',
                     'RAY_ADDRESS': '127.0.0.1:%d' % port})
    env.pop('CMP_CLUSTER', None)
    ray = os.path.join(os.path.dirname(sys.executable), 'ray')
    with open(os.path.join(d, 'head.log'), 'w') as log:
        head = _start([ray, 'start', '--head', '--num-cpus', '2', '--node-ip-address',
                       '127.0.0.1', '--port', str(port), '--include-dashboard', 'false',
                       '--temp-dir', d, '--block'], env, log)
        try:
            _wait_until(lambda: 'block forever' in _read(log.name), 'ray head',
                        [head], [log])
            yield 'ray', env
        finally:
            _stop(head)
            import shutil
            shutil.rmtree(d, ignore_errors=True)


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(params=sorted(ENGINES))
def cluster(request):
    return request.getfixturevalue(request.param + '_cluster')


# ---------------------------------------------------------------------------
# Running programs

def run(script, *args, cluster=None, env=None, timeout=150, cwd=None):
    """`python -m cmp [--cluster ADDRESS] script args`: (returncode, stdout, stderr)."""
    cmd = [sys.executable, '-m', 'cmp']
    if cluster:
        cmd += ['--cluster', cluster]
    env = dict(env or child_env())
    env.pop('CMP_CLUSTER', None)
    proc = subprocess.Popen(cmd + [script, *args], env=env, cwd=cwd or os.path.dirname(script),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, err = proc.communicate()
        pytest.fail('%s timed out\n--- stdout\n%s\n--- stderr\n%s' % (script, out, err))
    finally:
        _stop(proc)
    return proc.returncode, out, err


_FLOAT = re.compile(r'\d+\.\d+')
_BIG = re.compile(r'\d{3,}')        # pids


def lines(out):
    """The lines a person sees, pids and times masked, in any order (tasks
    finish in any order)."""
    return sorted(_BIG.sub('N', _FLOAT.sub('F', line)) for line in out.splitlines())


def assert_same_as_local(script, cluster, *args):
    address, env = cluster
    local = run(script, *args)
    remote = run(script, *args, cluster=address, env=env)
    assert local[0] == 0, local
    assert remote[0] == 0, remote
    assert lines(remote[1]) == lines(local[1]), (remote, local)
    assert remote[2] == local[2] == ''
    return remote[1]


def script(tmp_path, source, name='prog.py'):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


# ---------------------------------------------------------------------------
# Unmodified programs give the output they give on one machine

@pytest.mark.timeout(400)
@pytest.mark.parametrize('example', ['002-20.py', '002-21.py'])
def test_notes_pool_examples(example, cluster):
    out = assert_same_as_local(os.path.join(NOTES, example), cluster)
    assert out.strip()


EXECUTOR = '''
    import concurrent.futures, os
    from concurrent.futures import ProcessPoolExecutor

    def cube(x):
        print('cube', x)
        return x ** 3

    def fails(x):
        raise ValueError('no %d' % x)

    if __name__ == '__main__':
        with ProcessPoolExecutor(max_workers=2) as ex:
            print(type(ex).__module__.startswith(('cmp', 'concurrent')))
            print(list(ex.map(cube, range(8))))
            print(list(ex.map(cube, range(5), chunksize=2)))
            futures = [ex.submit(cube, n) for n in (10, 20)]
            print(sorted(f.result() for f in concurrent.futures.as_completed(futures)))
            f = ex.submit(fails, 3)
            print(repr(f.exception(timeout=60)))
            print(ex.submit(pow, 2, 10).result())
        try:
            ex.submit(cube, 1)
        except RuntimeError as e:
            print(e)
'''


@pytest.mark.timeout(300)
def test_executor_script(tmp_path, cluster):
    path = script(tmp_path, EXECUTOR)
    out = assert_same_as_local(path, cluster)
    assert '[0, 1, 8, 27, 64, 125, 216, 343]' in out
    assert "ValueError('no 3')" in out


API = '''
    import itertools, os, time
    from multiprocessing import Pool

    TAG = None

    def init(tag):
        global TAG
        TAG = tag

    def tagged(x):
        return TAG, x

    def square(x):
        return x * x

    def fail(x):
        if x == 3:
            raise KeyError('three')
        return x

    if __name__ == '__main__':
        parent = os.getpid()
        with Pool(2, initializer=init, initargs=('ready',)) as p:
            print(p.map(tagged, range(6), chunksize=2))
            print(p.starmap(divmod, [(7, 2), (9, 4), (5, 5)]))
            print(list(itertools.islice(p.imap(square, itertools.count()), 5)))
            print(list(p.imap(square, range(7), chunksize=3)))
            print(sorted(p.imap_unordered(square, range(7), chunksize=2)))
            print(p.apply(square, (12,)))
            seen = []
            r = p.map_async(square, range(4), callback=lambda v: seen.append(
                (os.getpid() == parent, v)))
            r.wait(60)
            print(seen, r.successful())
            errors = []
            r = p.apply_async(fail, (3,), error_callback=lambda e: errors.append(
                (os.getpid() == parent, repr(e))))
            r.wait(60)
            print(errors, r.successful())
            try:
                p.map(fail, range(5))
            except KeyError as e:
                print('KeyError', e, type(e.__cause__).__name__, 'in fail' in str(e.__cause__))
            print(p.map(square, []), list(p.imap(square, [])))
        with Pool(2, maxtasksperchild=1, initializer=init, initargs=('again',)) as p:
            print(p.map(tagged, range(3), chunksize=1))
        p = Pool(2)
        r = p.map_async(time.sleep, [0.3] * 4)
        p.close()
        p.join()
        print('joined', r.ready(), r.get())
'''


@pytest.mark.timeout(300)
def test_pool_api_script(tmp_path, cluster):
    out = assert_same_as_local(script(tmp_path, API), cluster)
    assert "KeyError 'three' RemoteTraceback True" in out
    assert "[('ready', 0), ('ready', 1)" in out


CHILDREN = '''
    import multiprocessing as mp

    def square(x):
        return x * x

    def child(q):
        try:
            with mp.Pool(2) as p:
                q.put(p.map(square, range(4)))
        except RuntimeError as e:
            q.put(str(e))

    if __name__ == '__main__':
        with mp.Pool(2) as p:
            print(p.map(square, range(3)))
        for method in ('spawn', 'fork'):
            q = mp.get_context(method).Queue()
            c = mp.get_context(method).Process(target=child, args=(q,))
            c.start()
            print(method, q.get(timeout=90))
            c.join()
'''


@pytest.mark.timeout(200)
def test_children_inherit_the_cluster(tmp_path, dask_cluster):
    """A spawned child's pool is on the cluster too (its script's functions
    travel by value from there); a forked one says it cannot be."""
    address, env = dask_cluster
    code, out, err = run(script(tmp_path, CHILDREN), cluster=address, env=env)
    assert code == 0, (out, err)
    assert out.splitlines() == [
        '[0, 1, 4]', 'spawn [0, 1, 4, 9]',
        'fork a cluster pool cannot be used in a process forked from one that used the '
        'cluster; start this child with the spawn or forkserver start method'], (out, err)


# ---------------------------------------------------------------------------
# Faults

KILLED = '''
    import os, signal, sys, time
    from multiprocessing import Pool
    from multiprocessing.pool import WorkerLostError

    def victim(path):
        with open(path + '.tmp', 'w') as f:
            f.write(str(os.getpid()))
        os.rename(path + '.tmp', path)
        time.sleep(100)

    def steady(x):
        time.sleep(1)
        return x

    if __name__ == '__main__':
        path = sys.argv[1]
        with Pool(2) as p:
            lost = p.apply_async(victim, (path,))
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            other = p.apply_async(steady, ('other',))
            os.kill(int(open(path).read()), signal.SIGKILL)
            try:
                lost.get(90)
                print('the task was not lost')
            except WorkerLostError as e:
                print('WorkerLostError:', e)
            print(other.get(90))
            print(p.map(abs, range(-3, 3)))
'''


@pytest.mark.timeout(300)
def test_worker_killed_mid_task(tmp_path, cluster):
    address, env = cluster
    code, out, err = run(script(tmp_path, KILLED), str(tmp_path / 'pid'), cluster=address,
                         env=env)
    assert code == 0, (out, err)
    out = out.splitlines()
    assert out[0].startswith('WorkerLostError: a %s worker died while running this task'
                             % {'ray': 'Ray'}.get(address, 'Dask')), out
    assert out[1:] == ['other', '[3, 2, 1, 0, 1, 2]'], out


UNSHIPPABLE = '''
    import multiprocessing as mp
    from multiprocessing import shared_memory

    def f(x):
        return x

    if __name__ == '__main__':
        shm = shared_memory.SharedMemory(create=True, size=16)
        try:
            with mp.Pool(2) as p:
                for obj in (mp.Lock(), mp.Queue(), mp.Value('i', 1), mp.Array('d', 3),
                            mp.RawArray('i', 2), mp.Pipe()[0], mp.Event(), shm):
                    try:
                        p.apply(f, (obj,))
                        print('shipped', type(obj).__name__)
                    except RuntimeError as e:
                        print(str(e).split(':')[0])
                r = p.apply_async(f, ([1, mp.Lock()],))
                try:
                    r.get(60)
                except RuntimeError as e:
                    print('async', str(e).split(':')[0])
                print(p.map(f, range(3)))
        finally:
            shm.close()
            shm.unlink()
'''


@pytest.mark.timeout(200)
def test_unshippable_argument(tmp_path, dask_cluster):
    address, env = dask_cluster
    code, out, err = run(script(tmp_path, UNSHIPPABLE), cluster=address, env=env)
    assert code == 0, (out, err)
    assert out.splitlines() == [
        '%s objects cannot be sent to a cluster worker' % name
        for name in ('Lock', 'Queue', 'Synchronized', 'SynchronizedArray', 'SharedArray',
                     'Connection', 'Event', 'SharedMemory')] + [
        'async Lock objects cannot be sent to a cluster worker', '[0, 1, 2]'], (out, err)


INTERFACES = '''
    import time
    from multiprocessing import Pool

    def interfaces(_):
        time.sleep(0.2)
        with open('/proc/net/dev') as f:
            return tuple(sorted(line.split(':')[0].strip() for line in f.readlines()[2:]))

    if __name__ == '__main__':
        with Pool(2) as p:
            for names in sorted(set(p.map(interfaces, range(16), chunksize=1))):
                print(' '.join(names))
'''


@pytest.mark.timeout(200)
def test_second_host(tmp_path, dask_cluster):
    """Tasks ran on both workers, one of them in its own network namespace."""
    if not SECOND_HOST:
        pytest.skip('no network namespace here (ip netns): both workers are on loopback')
    address, env = dask_cluster
    code, out, err = run(script(tmp_path, INTERFACES), cluster=address, env=env)
    assert code == 0, (out, err)
    seen = out.splitlines()
    assert '%s lo' % SECOND_HOST['interface'] in seen, seen
    assert len(seen) == 2, seen


# ---------------------------------------------------------------------------
# Clusters cmp starts, addresses and extras

def _engine_processes():
    """The pids of Dask workers and Ray's servers running now."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        with contextlib.suppress(OSError):
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmdline = f.read()
            if b'distributed.cli.dask_worker' in cmdline or b'raylet' in cmdline \
                    or b'gcs_server' in cmdline:
                pids.add(int(pid))
    return pids


@pytest.mark.timeout(300)
@pytest.mark.parametrize('engine', sorted(ENGINES))
def test_local_cluster_started_and_gone(engine):
    """--cluster dask / ray with nothing running: cmp starts a local cluster
    for the program, and nothing of it outlives the program."""
    if not have(engine):
        pytest.skip('%s is not installed' % ENGINES[engine])
    before = _engine_processes()
    example = os.path.join(NOTES, '002-21.py')
    local = run(example)
    assert run(example, cluster=engine) == local
    deadline = time.monotonic() + 30
    while _engine_processes() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _engine_processes() - before


def test_bad_address_and_missing_extra(tmp_path):
    prog = script(tmp_path, 'print("ran")\n')
    code, out, err = run(prog, cluster='nowhere')
    assert code == 1 and out == ''
    assert "cluster address 'nowhere' is not 'dask'" in err
    for argv, message in ((['--cluster=nowhere', prog], "address 'nowhere' is not"),
                          (['--cluster'], '--cluster needs an address'),
                          (['--cluster', 'dask'], '--cluster needs a script')):
        proc = subprocess.run([sys.executable, '-m', 'cmp', *argv], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1 and message in proc.stderr, (argv, proc.stderr)
    # Without site-packages the engines are absent; cmp comes from the source tree.
    env = child_env({'PYTHONPATH': os.path.dirname(os.path.dirname(
        importlib.util.find_spec('cmp').origin))})
    for engine, extra in (('dask', 'cmp[dask]'), ('ray', 'cmp[ray]')):
        proc = subprocess.run([sys.executable, '-S', '-m', 'cmp', '--cluster', engine, prog],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stdout == ''
        assert "needs %s: pip install '%s'" % (ENGINES[engine], extra) in proc.stderr
    proc = subprocess.run(
        [sys.executable, '-S', '-c', 'import cmp; cmp.Pool(2, cluster="ray")'],
        env=env, capture_output=True, text=True, timeout=60)
    assert "ImportError: cluster 'ray' needs ray: pip install 'cmp[ray]'" in proc.stderr


def test_parse():
    from cmp.cluster import parse
    assert parse('dask') == ('dask', None)
    assert parse('ray') == ('ray', None)
    assert parse('dask://127.0.0.1:8786') == ('dask', 'tcp://127.0.0.1:8786')
    assert parse('tcp://127.0.0.1:8786') == ('dask', 'tcp://127.0.0.1:8786')
    assert parse('ray://127.0.0.1:10001') == ('ray', 'ray://127.0.0.1:10001')
    for bad in ('', 'dask://', 'spark://x:1', 'Dask'):
        with pytest.raises(ValueError):
            parse(bad)
    with pytest.raises(TypeError):
        parse(None)
