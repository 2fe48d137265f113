"""Every module of the running interpreter's multiprocessing package has a
cmp counterpart, and every name that code may use from it exists there with
the same meaning.

The rule for which names of a stdlib module are compared:
- every public name (no leading underscore) bound in the module, except
  names that are only the stdlib's own implementation imports: a module
  that is not part of multiprocessing (os, sys, ...) or a class or function
  defined outside multiprocessing (WeakSet, format_exc, getpid, ...);
  constants and instances are always compared;
- the underscore names in PRIVATE: those that code outside multiprocessing
  uses (loky/joblib, torch, CPython's own multiprocessing tests), each with
  its user. Other underscore names are the stdlib's implementation;
- `__all__`, as a set.
"Same meaning" is checked by kind: a module is the counterpart module, a
class is a class, a callable is callable, a simple constant is equal.
EXCEPTIONS lists the few names that differ on purpose, each with its reason.
Attributes of classes that code outside the stdlib uses are in ATTRIBUTES.
"""
import importlib
import numbers
import pkgutil
import sys
import types

import pytest

import cmp

std = pytest.importorskip('multiprocessing')

# Stdlib modules that cannot exist on Linux (they import Windows modules).
NOT_ON_LINUX = {'popen_spawn_win32'}

PRIVATE = {
    '': [],
    'queues': ['_sentinel'],                                    # loky
    'process': ['_dangling', '_cleanup', '_children',           # CPython tests
                '_current_process'],                            # pebble, billiard users
    'util': ['_args_from_interpreter_flags',                    # loky
             '_exit_function',                                  # torch DataLoader, loky
             '_logger', '_log_to_stderr',                       # loky
             '_finalizer_registry', '_afterfork_registry',      # CPython tests
             '_run_finalizers', '_cleanup_tests'],              # CPython tests
    'context': ['_concrete_contexts', '_default_context'],      # loky
    'reduction': ['_reduce_socket', '_rebuild_socket'],         # loky
    'resource_tracker': ['_resource_tracker', '_CLEANUP_FUNCS',  # loky
                         '_fork_intent'],                       # loky (3.13+)
    'shared_memory': ['_make_filename', '_USE_POSIX',           # CPython tests
                      '_SHM_NAME_PREFIX'],
    'spawn': ['_main'],                                         # custom spawn runners
    'forkserver': ['_forkserver'],                              # CPython tests
    'connection': ['_verify_challenge', '_create_response',     # CPython tests (3.12+)
                   '_CHALLENGE'],
}

ATTRIBUTES = {
    ('pool', 'Pool'): ['_repopulate_pool', '_maintain_pool'],   # CPython tests, loky
    ('resource_tracker', 'ResourceTracker'): ['_stop', '_check_alive'],   # CPython tests
    ('heap', 'Heap'): ['malloc', 'free'],
    ('heap', 'BufferWrapper'): ['create_memoryview', '_heap'],
    ('reduction', 'ForkingPickler'): ['register', 'dumps', 'loads'],
    ('queues', 'Queue'): ['_on_queue_feeder_error', '_reset'],  # loky subclasses Queue
}

EXCEPTIONS = {
    # The source text the stdlib exec()s to make Synchronized properties;
    # cmp makes them with closures (sharedctypes.make_property).
    ('sharedctypes', 'template'): 'an exec() source template of the stdlib',
}


def stdlib_modules():
    names = sorted(m.name for m in pkgutil.iter_modules(std.__path__)
                   if m.name not in NOT_ON_LINUX)
    return [''] + names + ['dummy.connection']


def qualified(prefix, mod):
    return prefix + ('.' + mod if mod else '')


def is_implementation_import(value):
    """A module, class or function from outside multiprocessing."""
    if isinstance(value, types.ModuleType):
        return not value.__name__.startswith('multiprocessing')
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return not (getattr(value, '__module__', None) or '').startswith('multiprocessing')
    return False


def compared_names(mod, smod):
    public = {n for n, v in vars(smod).items()
              if not n.startswith('_') and not is_implementation_import(v)}
    private = {n for n in PRIVATE.get(mod, ()) if hasattr(smod, n)}
    return sorted(public | private)


def simple(value):
    if value is None or isinstance(value, (str, bytes, bool, numbers.Number)):
        return True
    if isinstance(value, (tuple, list, frozenset, set)):
        return all(simple(v) for v in value)
    return False


def meaning_differs(mod, name, sval, cval):
    """Why cval does not mean what sval does, or None."""
    if isinstance(sval, types.ModuleType):
        want = sval.__name__.replace('multiprocessing', 'cmp', 1)
        if not isinstance(cval, types.ModuleType) or cval.__name__ != want:
            return 'should be the module %s, is %r' % (want, cval)
        return None
    if isinstance(sval, type):
        return None if isinstance(cval, type) else 'should be a class, is %r' % (cval,)
    if callable(sval):
        return None if callable(cval) else 'should be callable, is %r' % (cval,)
    if simple(sval) and cval != sval:
        return 'should equal %r, is %r' % (sval, cval)
    if type(sval) is not type(cval) and not simple(sval):
        if type(sval).__name__ != type(cval).__name__:
            return 'should be a %s, is a %s' % (type(sval).__name__, type(cval).__name__)
    return None


@pytest.mark.parametrize('mod', stdlib_modules())
def test_module_namespace(mod):
    smod = importlib.import_module(qualified('multiprocessing', mod))
    cmod = importlib.import_module(qualified('cmp', mod))
    problems = []
    for name in compared_names(mod, smod):
        if (mod, name) in EXCEPTIONS:
            continue
        if not hasattr(cmod, name):
            problems.append('%s: missing' % name)
            continue
        why = meaning_differs(mod, name, getattr(smod, name), getattr(cmod, name))
        if why:
            problems.append('%s: %s' % (name, why))
    if hasattr(smod, '__all__'):
        if set(getattr(cmod, '__all__', ())) != set(smod.__all__):
            problems.append('__all__: %s != %s' % (sorted(getattr(cmod, '__all__', ())),
                                                   sorted(smod.__all__)))
    assert not problems, 'cmp.%s differs from %s:\n  %s' % (
        mod or '', smod.__name__, '\n  '.join(problems))


@pytest.mark.parametrize('mod,cls', sorted(ATTRIBUTES))
def test_class_attributes(mod, cls):
    sclass = getattr(importlib.import_module(qualified('multiprocessing', mod)), cls)
    cclass = getattr(importlib.import_module(qualified('cmp', mod)), cls)
    missing = [a for a in ATTRIBUTES[mod, cls] if hasattr(sclass, a) and not hasattr(cclass, a)]
    assert not missing, '%s.%s lacks %s' % (mod, cls, missing)


def test_connection_handle_is_writable():
    # CPython's tests set conn._handle = None so that __del__ stays quiet.
    a, b = cmp.Pipe()
    a.close()
    a._handle = None
    assert a._handle is None
    b.close()


def test_every_cmp_module_mirrors_a_stdlib_one():
    # The reverse direction: cmp's own modules are the stdlib's plus its
    # private helpers (underscore names), the runner, and `cluster` (Pool on
    # Dask or Ray: the one package of cmp's own, loaded only when asked for).
    ours = {m.name for m in pkgutil.iter_modules(cmp.__path__)}
    extra = ({m for m in ours if not m.startswith('_')} - set(stdlib_modules())
             - {'cluster'} - NOT_ON_LINUX)
    assert not extra, extra


def test_every_stdlib_module_file_is_there_and_the_windows_one_fails_alike():
    # CPython's _TestImportStar lists the package's *.py files and removes
    # popen_spawn_win32 from them on Linux.
    def files(pkg):
        return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))
    assert set(files(std)) <= set(files(cmp))
    for name in NOT_ON_LINUX:
        with pytest.raises(ImportError) as want:
            importlib.import_module('multiprocessing.' + name)
        with pytest.raises(ImportError) as got:
            importlib.import_module('cmp.' + name)
        assert (type(got.value), str(got.value)) == (type(want.value), str(want.value))
