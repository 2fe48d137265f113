"""What runs on a cluster worker: one task of a cluster Pool.

The client pickles every part of a task with cloudpickle (so functions of
the program's __main__ travel by value: the cluster does not have the
script), and the engine (Dask or Ray) only carries bytes. A worker process
keeps, per pool, the unpickled initializer and functions, and how many tasks
it ran since the initializer last ran (maxtasksperchild). What a task prints
is captured and goes back with its result, so it appears in the program's
own output, as a local pool worker's would.
"""
import io
import itertools
import sys
import threading
import types

import cloudpickle

from .. import _core
from ..pool import ExceptionWithTraceback, MaybeEncodingError

_APPLY = _core.POOL_TASK_APPLY
_MAP = _core.POOL_TASK_MAP

_lock = threading.Lock()
_pools = {}         # pool token -> _PoolState, in this worker process
_MAX_POOLS = 64


class _PoolState:
    """A pool's functions in this worker process. Functions of the program's
    __main__ arrive by value, each with a copy of the globals it uses; here
    they share one namespace, as they would in a worker forked from the
    program, so that what the initializer sets is what the tasks see."""
    __slots__ = ('head', 'globals', 'funcs', 'init', 'maxtasks', 'done')

    def __init__(self, head):
        self.head = head
        self.fresh()

    def fresh(self):
        """As a new local worker: the program's globals, the initializer to run."""
        self.globals = {}
        self.funcs = {}
        initializer, initargs, self.maxtasks = cloudpickle.loads(self.head)
        self.init = (self.adopt(initializer), initargs) if initializer is not None else None
        self.done = 0

    def before_task(self):
        """The initializer before the first task, and again after every
        maxtasks tasks (where a local pool starts a new worker)."""
        if self.maxtasks and self.done >= self.maxtasks:
            self.fresh()
        if self.init is not None:
            init, self.init = self.init, None
            init[0](*init[1])
        self.done += 1

    def func(self, blob):
        f = self.funcs.get(blob)
        if f is None:
            if len(self.funcs) >= 256:
                self.funcs.clear()
            f = self.funcs[blob] = self.adopt(cloudpickle.loads(blob))
        return f

    def adopt(self, f):
        """f, and the functions among its globals, rebound to the shared
        namespace if it came by value."""
        if not _by_value(f) or f.__globals__ is self.globals:
            return f
        g = self.globals
        new = [(k, v) for k, v in f.__globals__.items() if k not in g]
        g.update(new)
        for k, v in new:
            if _by_value(v):
                g[k] = _rebind(v, g)
        return _rebind(f, g)


def _by_value(f):
    if not isinstance(f, types.FunctionType):
        return False
    module = sys.modules.get(f.__module__)
    return getattr(module, '__dict__', None) is not f.__globals__


def _rebind(f, g):
    new = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
    new.__kwdefaults__ = f.__kwdefaults__
    new.__qualname__ = f.__qualname__
    new.__dict__.update(f.__dict__)
    return new


def _state(token, head):
    with _lock:
        st = _pools.get(token)
        if st is None:
            if len(_pools) >= _MAX_POOLS:
                _pools.pop(next(iter(_pools)))
            st = _pools[token] = _PoolState(head)
        return st


# ---------------------------------------------------------------------------
# Capturing what a task prints, per thread (a Dask worker may run several)

class _Tee(io.TextIOBase):
    """sys.stdout or sys.stderr of a worker: a thread running a task writes to
    its buffer, any other thread to the stream underneath."""

    def __init__(self, under, which):
        self.under = under
        self.which = which
        self.local = threading.local()

    def write(self, s):
        buf = getattr(self.local, 'buf', None)
        if buf is None:
            return self.under.write(s)
        return buf.write(s)

    def flush(self):
        if getattr(self.local, 'buf', None) is None:
            self.under.flush()

    def __getattr__(self, name):
        return getattr(self.under, name)


def _tees():
    with _lock:
        if not isinstance(sys.stdout, _Tee):
            sys.stdout = _Tee(sys.stdout, 'stdout')
        if not isinstance(sys.stderr, _Tee):
            sys.stderr = _Tee(sys.stderr, 'stderr')
        return sys.stdout, sys.stderr


def run(token, head, func, kind, payload):
    """Run one task; its outcome, pickled: (ok, value, stdout, stderr)."""
    out, err = _tees()
    out.local.buf, err.local.buf = io.StringIO(), io.StringIO()
    try:
        try:
            st = _state(token, head)
            st.before_task()
            f = st.func(func)
            args = cloudpickle.loads(payload)
            if kind == _APPLY:
                value = f(*args[0], **args[1])
            elif kind == _MAP:
                value = list(map(f, args))
            else:
                value = list(itertools.starmap(f, args))
            outcome = (True, value)
        except Exception as e:
            outcome = (False, ExceptionWithTraceback(e, e.__traceback__))
    finally:
        printed = out.local.buf.getvalue(), err.local.buf.getvalue()
        out.local.buf = err.local.buf = None
    try:
        return cloudpickle.dumps(outcome + printed)
    except Exception as e:
        wrapped = MaybeEncodingError(e, outcome[1])
        return cloudpickle.dumps((False, ExceptionWithTraceback(wrapped, None)) + printed)
