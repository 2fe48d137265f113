"""Real programs that reach multiprocessing through libraries (issue 11):
each runs as `python prog.py` (the stdlib) and as `python -m cmp prog.py`,
and must print the same and exit the same.

The libraries come from the `clients` extra (torch only on 3.11, where a
CPU build is at hand); a test whose library is absent is skipped. Where a
program needs a module that another part of issue 11 brings (cmp's
resource_tracker, resource_sharer), the test is a strict xfail until then.
concurrent.futures' ProcessPoolExecutor under fork, spawn and forkserver is
tests/test_futures.py.
"""
import importlib.util
import textwrap

import pytest

from support import assert_same, normalize, run_both

# Each side starts interpreters that import the library (torch: seconds).
RUN_TIMEOUT = 240
pytestmark = pytest.mark.timeout(2 * RUN_TIMEOUT + 30)


def _have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def needs(module):
    """Skip unless `module` can be imported (without importing it here)."""
    if not _have(module):
        pytest.skip('%s is not installed (the clients extra)' % module)


def needs_cmp_module(name):
    """A strict xfail while cmp has no `name` (issue 11, the surface part)."""
    return pytest.mark.xfail(
        not _have('cmp.' + name), strict=True,
        reason='issue 11: multiprocessing.%s comes with the surface helper' % name)


def same(program, *args):
    assert_same(textwrap.dedent(program), runner=True, args=args, timeout=RUN_TIMEOUT)


# ---------------------------------------------------------------------------
# joblib

JOBLIB = '''
import sys
from joblib import Parallel, delayed

def square(x):
    return x * x

def fail(x):
    if x == 3:
        raise ValueError('bad %d' % x)
    return x

if __name__ == '__main__':
    kw = {} if sys.argv[1] == 'default' else {'backend': sys.argv[1]}
    print(Parallel(n_jobs=2, **kw)(delayed(square)(i) for i in range(20)))
    print(Parallel(n_jobs=2, batch_size=1, **kw)(delayed(square)(i) for i in range(7)))
    with Parallel(n_jobs=2, **kw) as parallel:
        print(sum(parallel(delayed(square)(i) for i in range(100))))
        print(parallel(delayed(divmod)(i, 3) for i in range(5)))
    try:
        Parallel(n_jobs=2, **kw)(delayed(fail)(i) for i in range(6))
    except ValueError as e:
        print('ValueError', e)
'''


@needs_cmp_module('resource_tracker')
def test_joblib_default_backend():
    # loky: its own Popen (a fresh `python -m ...`), its Queue subclass with
    # its own feeder, its SimpleQueue, cmp's Pipe ends pickled by its reducer.
    needs('joblib')
    same(JOBLIB, 'default')


def test_joblib_multiprocessing_backend():
    needs('joblib')
    same(JOBLIB, 'multiprocessing')


MEMMAP = '''
import numpy as np
from joblib import Parallel, delayed

def kind(a):
    return type(a).__name__, float(a.sum())

if __name__ == '__main__':
    big = np.ones(300_000)      # 2.4 MB, above max_nbytes (1 MB): sent as a memmap
    print(Parallel(n_jobs=2, backend='multiprocessing')(delayed(kind)(x) for x in [big, big[:10]]))
'''


@pytest.mark.xfail(strict=True, reason=(
    "cmp's Pool keeps its queues in C and never calls _setup_queues(), which joblib's "
    "MemmappingPool overrides to pickle large arrays as memmaps: workers get ndarrays"))
def test_joblib_multiprocessing_backend_memmaps_large_arrays():
    needs('joblib')
    needs('numpy')
    same(MEMMAP)


# numpy pickles a large array (protocol 5) as a PickleBuffer, which cmp's
# picklers once could not take (SystemError in Queue.put and Pool tasks).
ARRAYS = '''
import threading
import numpy as np

def total(a):
    return float(a.sum()), a.flags['F_CONTIGUOUS']

if __name__ == '__main__':
    c = np.arange(300_000, dtype=float)
    f = np.asfortranarray(np.arange(600_000, dtype=float).reshape(1000, 600))
    for a in (c, f):
        q = mp.Queue()
        q.put(a)
        print((q.get() == a).all())
        s = mp.SimpleQueue()          # (a pipe in the stdlib: put from another thread)
        threading.Thread(target=s.put, args=(a,)).start()
        print((s.get() == a).all())
        r, w = mp.Pipe()
        threading.Thread(target=w.send, args=(a,)).start()
        print((r.recv() == a).all())
        with mp.Pool(2) as pool:
            print(pool.apply(total, (a,)), pool.map(total, [a, a[:10]]))
            print(pool.apply(np.ones, (300_000,)).sum())
'''


def test_large_numpy_arrays_through_queues_pipes_and_pools():
    needs('numpy')
    same(ARRAYS)


# ---------------------------------------------------------------------------
# torch

DATALOADER = '''
import torch
from torch.utils.data import DataLoader, Dataset

class Squares(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([i, i * i])

if __name__ == '__main__':
    loader = DataLoader(Squares(), batch_size=3, num_workers=2)
    print([batch.tolist() for batch in loader])
    print(sum(int(b.sum()) for b in DataLoader(Squares(), batch_size=4, num_workers=2)))
'''

SHARED_TENSOR = '''
import torch
import torch.multiprocessing as tmp

def child(q, done):
    t = q.get()
    t.add_(1)
    done.set()

if __name__ == '__main__':
    q = tmp.Queue()
    done = tmp.Event()
    t = torch.zeros(4)
    t.share_memory_()
    p = tmp.Process(target=child, args=(q, done))
    p.start()
    q.put(t)
    print(done.wait(60))
    p.join(60)
    print(t.tolist(), p.exitcode)
'''


@needs_cmp_module('resource_tracker')
@needs_cmp_module('resource_sharer')
def test_torch_dataloader():
    # Workers send tensors as shared-memory descriptors (reduction.DupFd,
    # which needs the resource sharer outside of spawning).
    needs('torch')
    same(DATALOADER)


@needs_cmp_module('resource_tracker')
@needs_cmp_module('resource_sharer')
def test_torch_shared_tensor_through_a_queue():
    needs('torch')
    same(SHARED_TENSOR)


# ---------------------------------------------------------------------------
# dask, tqdm

DASK = '''
import dask

def inc(x):
    return x + 1

def fail(x):
    raise KeyError(x)

if __name__ == '__main__':
    parts = [dask.delayed(inc)(i) for i in range(10)]
    total = dask.delayed(sum)(parts)
    print(dask.compute(*parts, total, scheduler='processes', num_workers=2))
    try:
        dask.compute(dask.delayed(fail)(7), scheduler='processes', num_workers=2)
    except KeyError as e:
        print('KeyError', e)
'''

PROCESS_MAP = '''
from tqdm.contrib.concurrent import process_map

def square(x):
    return x * x

if __name__ == '__main__':
    print(process_map(square, range(20), max_workers=2, chunksize=3))
    print(sum(process_map(square, range(500), max_workers=2, chunksize=50)))
'''


def test_dask_processes_scheduler():
    needs('dask')
    same(DASK)


def test_tqdm_process_map():
    needs('tqdm')
    same(PROCESS_MAP)


# ---------------------------------------------------------------------------
# The resource_tracker.unregister idiom: a process that attaches to shared
# memory it did not create tells the tracker to leave it alone.

UNREGISTER = '''
import os, sys
from multiprocessing import resource_tracker, shared_memory

def child(name):
    shm = shared_memory.SharedMemory(name=name)
    resource_tracker.unregister(shm._name, 'shared_memory')
    shm.buf[:5] = b'hello'
    shm.close()

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    shm = shared_memory.SharedMemory(create=True, size=64)
    p = mp.Process(target=child, args=(shm.name,))
    p.start()
    p.join()
    print(p.exitcode, bytes(shm.buf[:5]))
    shm.close()
    shm.unlink()
    print(os.path.exists('/dev/shm/' + shm.name))
'''


@needs_cmp_module('resource_tracker')
@pytest.mark.parametrize('method', ['fork', 'spawn'])
def test_resource_tracker_unregister_idiom(method):
    # The stdlib's tracker then prints a KeyError traceback on stderr, from
    # the parent's unlink(): the child's attach registered the name again
    # and its unregister removed the only entry (CPython gh-82300). cmp's
    # stays quiet, so only stdout and exit status are compared.
    std, mine = run_both(textwrap.dedent(UNREGISTER), runner=True, args=(method,),
                         timeout=RUN_TIMEOUT)
    assert not mine.timed_out, mine.stderr
    assert normalize(mine.stdout) == normalize(std.stdout), (std.stdout, mine.stdout,
                                                             mine.stderr)
    assert mine.returncode == std.returncode == 0, (std.stderr, mine.stderr)
    assert 'Traceback' not in mine.stderr, mine.stderr


# ---------------------------------------------------------------------------
# Pythons the program starts itself (loky's workers and resource tracker are
# `python -m ...` subprocesses) run multiprocessing on cmp too.

CHILD_INTERPRETER = '''
import subprocess, sys
code = 'import multiprocessing, multiprocessing.queues; print(multiprocessing.queues.__name__)'
print(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout.strip())
print(subprocess.run([sys.executable, '-c', 'import sys; print("multiprocessing" in sys.modules)'],
                     capture_output=True, text=True).stdout.strip())
'''


def test_a_python_the_program_starts_runs_on_cmp():
    std, mine = run_both(textwrap.dedent(CHILD_INTERPRETER), runner=True)
    assert std.stdout.split() == ['multiprocessing.queues', 'False'], std.stderr
    # Nothing is imported before the child imports multiprocessing.
    assert mine.stdout.split() == ['cmp.queues', 'False'], mine.stderr


def test_a_shadowed_sitecustomize_still_runs(tmp_path):
    (tmp_path / 'sitecustomize.py').write_text('import builtins\nbuiltins.SITE_RAN = True\n')
    code = textwrap.dedent('''
        import subprocess, sys
        r = subprocess.run([sys.executable, '-c', 'print(SITE_RAN)'],
                           capture_output=True, text=True)
        print(r.stdout.strip(), r.returncode)
    ''')
    std, mine = run_both(code, runner=True, env={'PYTHONPATH': str(tmp_path)})
    assert std.stdout.split() == ['True', '0'], std.stderr
    assert mine.stdout == std.stdout, mine.stderr


# ---------------------------------------------------------------------------
# A Queue subclass that takes the stdlib's feeder thread over, as loky's does
# (without needing loky): cmp gives it the stdlib's design (_FeederQueue).

FEEDER = '''
import pickle, sys, threading, weakref
from multiprocessing import util
from multiprocessing.queues import Queue, _sentinel

class Upper(Queue):
    """Sends strings upper-cased, pickling in its own feeder thread."""

    def _start_thread(self):
        self._buffer.clear()
        self._thread = threading.Thread(
            target=Upper._feed, daemon=True,
            args=(self._buffer, self._notempty, self._send_bytes, self._wlock,
                  self._sem, self._on_queue_feeder_error))
        self._thread.start()
        self._jointhread = util.Finalize(self._thread, Queue._finalize_join,
                                         [weakref.ref(self._thread)], exitpriority=-5)
        self._close = util.Finalize(self, Queue._finalize_close,
                                    [self._buffer, self._notempty], exitpriority=10)

    @staticmethod
    def _feed(buffer, notempty, send_bytes, wlock, sem, onerror):
        while True:
            with notempty:
                if not buffer:
                    notempty.wait()
            while buffer:
                obj = buffer.popleft()
                if obj is _sentinel:
                    return
                try:
                    data = pickle.dumps(obj.upper() if isinstance(obj, str) else obj)
                except Exception as e:
                    sem.release()
                    onerror(e, obj)
                    continue
                with wlock:
                    send_bytes(data)

    def _on_queue_feeder_error(self, e, obj):
        print('feeder error', type(e).__name__, flush=True)

def child(q, out):
    out.put(q.get() + '!')

if __name__ == '__main__':
    mp.set_start_method(sys.argv[1])
    q = Upper(2, ctx=mp.get_context())
    q.put('a')
    q.put('b')
    print(q.full(), q.qsize(), q._maxsize)
    try:
        q.put('c', timeout=0.1)
    except Exception as e:
        print(type(e).__name__)
    print(q.get(timeout=10), q.get(timeout=10), q.full())
    q.put(threading.Lock())                 # cannot be pickled: the feeder reports it
    q.put('x')
    print(q.get(timeout=10))
    out = mp.Queue()
    p = mp.Process(target=child, args=(q, out))
    p.start()
    q.put('hello')
    print(out.get(timeout=30))
    p.join()
    q.close()
    q.join_thread()
    try:
        q.put('late')
    except ValueError:
        print('closed')
    print(p.exitcode)
'''


@pytest.mark.parametrize('method', ['fork', 'spawn'])
def test_a_queue_subclass_with_its_own_feeder(method):
    same(FEEDER, method)
