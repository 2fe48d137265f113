"""concurrent.futures.ProcessPoolExecutor on cmp: under `python -m cmp` (where
it imports cmp as multiprocessing) and with mp_context=cmp.get_context(), its
results, errors and broken-pool handling match the stdlib's."""
import textwrap

import pytest

from support import assert_same, run_both

PROGRAM = '''
import os, pickle, signal, sys, threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

def square(x):
    return x * x

def fail(x):
    raise ValueError('bad %r' % (x,))

def suicide(x):
    os.kill(os.getpid(), signal.SIGKILL)

def where(_):
    return INIT

INIT = None
def init(v):
    global INIT
    INIT = v

def executor(**kw):
    return ProcessPoolExecutor(2, mp_context=mp.get_context(START), **kw)

if __name__ == '__main__':
    START = sys.argv[1]
    import concurrent.futures.process as cfp
    print('uses mp', cfp.mp.__name__ == mp.__name__)
    with executor() as ex:
        print(list(ex.map(square, range(10))))
        print(sum(ex.map(square, range(1000), chunksize=50)))
        f = ex.submit(fail, 3)
        print(type(f.exception()).__name__, f.exception())
        f = ex.submit(square, threading.Lock())        # cannot be pickled
        e = f.exception(timeout=30)
        print('unpicklable', type(e).__name__)
        print(ex.submit(square, 12).result(timeout=30))
    with executor(initializer=init, initargs=('ready',)) as ex:
        print(set(ex.map(where, range(4))))
    ex = executor()
    print(ex.submit(square, 2).result())
    f = ex.submit(suicide, 0)
    try:
        f.result(timeout=30)
    except BrokenProcessPool:
        print('BrokenProcessPool')
    ex.shutdown()
'''


@pytest.mark.parametrize('method', ['fork', 'spawn', 'forkserver'])
def test_under_the_runner(method):
    # concurrent.futures imports multiprocessing: under `python -m cmp`, cmp.
    assert_same(textwrap.dedent(PROGRAM), runner=True, args=(method,), timeout=120)


def test_with_a_cmp_fork_context():
    # Without the runner, concurrent.futures builds its queues on the stdlib's
    # classes; with a cmp fork context they work (README: spawn and
    # forkserver need the runner).
    std, mine = run_both(textwrap.dedent(PROGRAM), args=('fork',), timeout=120)
    assert mine.returncode == std.returncode == 0, mine.stderr
    assert mine.stdout.split('\n')[1:] == std.stdout.split('\n')[1:], mine.stdout
