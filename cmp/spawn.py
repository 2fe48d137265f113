"""Starting a fresh interpreter for a child: what it needs to become a copy
of the parent (mirrors multiprocessing.spawn).

The parent sends two pickles down a pipe: the preparation data (sys.path,
argv, cwd, start method, how to re-import __main__, whether multiprocessing
is aliased to cmp, the resource tracker to share) and the Process object. The child applies the first,
unpickles the second and runs its bootstrap.
"""
import os
import pickle
import runpy
import sys
import types

from . import _alias, _core, _versions, context, process, reduction, util  # noqa: F401

__all__ = ['_main', 'freeze_support', 'set_executable', 'get_executable',
           'get_preparation_data', 'get_command_line', 'import_main_path']

WINEXE = False
WINSERVICE = False

_executable = sys.executable
_old_main_modules = old_main_modules = []   # the stdlib's name for it
get_start_method = context._default_context.get_start_method
set_start_method = context._default_context.set_start_method


def set_executable(exe):
    global _executable
    _executable = os.fsdecode(exe)


def get_executable():
    return _executable


def freeze_support():
    """Nothing to do on Linux."""


def is_forking(argv):
    return len(argv) >= 2 and argv[1] == '--cmp-spawn'


def get_command_line(**kwds):
    """The argv that starts a spawned child reading its data from kwds['fd']."""
    import subprocess
    opts = subprocess._args_from_interpreter_flags()
    prog = 'from cmp.spawn import spawn_main; spawn_main()'
    args = ['%s=%s' % item for item in sorted(kwds.items())]
    return [_executable, *opts, '-c', prog, '--cmp-spawn', *args]


def _child_sys_path():
    """sys.path with its (first) '' -- the current directory, which the
    child may not share -- made the directory this program started in."""
    path = sys.path.copy()
    if '' in path:
        path[path.index('')] = process.ORIGINAL_DIR
    return path


def get_preparation_data(name):
    """What a spawned child needs to look like its parent."""
    d = dict(
        name=name,
        authkey=bytes(process.current_process().authkey),
        sys_path=_child_sys_path(),
        sys_argv=sys.argv,
        dir=os.getcwd(),
        orig_dir=process.ORIGINAL_DIR,
        start_method=context._default_context.get_start_method(
            allow_none=_versions.START_LEAVES_DEFAULT_UNSET),
        alias=_alias.installed(),
        log_to_stderr=util._log_to_stderr,
    )
    if util._logger is not None:
        d['log_level'] = util._logger.getEffectiveLevel()
    main_module = sys.modules['__main__']
    main_spec = getattr(main_module, '__spec__', None)
    main_name = getattr(main_spec, 'name', None)
    if main_name is not None and main_name != '__main__':
        d['init_main_from_name'] = main_name
    else:
        main_path = getattr(main_module, '__file__', None)
        if main_path is not None:
            if not os.path.isabs(main_path) and process.ORIGINAL_DIR is not None:
                main_path = os.path.join(process.ORIGINAL_DIR, main_path)
            d['init_main_from_path'] = os.path.normpath(main_path)
    return d


def prepare(data):
    """Apply preparation data in a fresh child."""
    if data.get('alias'):
        _alias.install()
    if 'name' in data:
        process.current_process().name = data['name']
    if 'authkey' in data:
        process.current_process().authkey = data['authkey']
    if data.get('log_to_stderr'):
        util.log_to_stderr()
    if 'log_level' in data:
        util.get_logger().setLevel(data['log_level'])
    if 'sys_path' in data:
        sys.path = data['sys_path']
    if 'sys_argv' in data:
        sys.argv = data['sys_argv']
    if 'dir' in data:
        os.chdir(data['dir'])
    if 'orig_dir' in data:
        process.ORIGINAL_DIR = data['orig_dir']
    if 'start_method' in data:
        context._force_start_method(data['start_method'])
    if 'resource_tracker' in data:
        from . import resource_tracker
        resource_tracker._attach(*data['resource_tracker'])
    if 'init_main_from_name' in data:
        _fixup_main_from_name(data['init_main_from_name'])
    elif 'init_main_from_path' in data:
        _fixup_main_from_path(data['init_main_from_path'])


def _install_main(module):
    # Functions pickled as __main__.f in the parent resolve here.
    _old_main_modules.append(sys.modules['__main__'])
    sys.modules['__main__'] = sys.modules['__mp_main__'] = module


def _forget_main(main_path):
    """Undo a main module whose import failed half-way: the fork server
    goes on without it (3.15), so its children import it afresh."""
    if _old_main_modules and getattr(sys.modules['__main__'], '__file__', None) == main_path:
        sys.modules['__main__'] = _old_main_modules.pop()
        sys.modules.pop('__mp_main__', None)


def _fixup_main_from_name(mod_name):
    current = sys.modules['__main__']
    if mod_name == '__main__' or mod_name.endswith('.__main__'):
        return          # running a package's __main__ again would rerun the program
    if getattr(current.__spec__, 'name', None) == mod_name:
        return
    module = types.ModuleType('__mp_main__')
    module.__dict__.update(runpy.run_module(mod_name, run_name='__mp_main__',
                                            alter_sys=True))
    _install_main(module)


def _fixup_main_from_path(main_path):
    """Import the parent's main script as __mp_main__ (its `if __name__ ==
    '__main__'` block does not run)."""
    current = sys.modules['__main__']
    if os.path.splitext(os.path.basename(main_path))[0] == 'ipython':
        return
    if getattr(current, '__file__', None) == main_path:
        return
    import_main_path(main_path)


def import_main_path(main_path):
    """Run the script at main_path as module __mp_main__ and make it __main__."""
    if os.path.isfile(main_path):
        import builtins
        module = types.ModuleType('__mp_main__')
        module.__file__ = main_path
        module.__cached__ = None
        module.__builtins__ = builtins
        _install_main(module)
        with open(main_path, 'rb') as f:
            code = compile(f.read(), main_path, 'exec', dont_inherit=True)
        exec(code, module.__dict__)
    else:       # a directory or zip with __main__.py
        module = types.ModuleType('__mp_main__')
        module.__dict__.update(runpy.run_path(main_path, run_name='__mp_main__'))
        _install_main(module)


def _read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b''.join(chunks)
        chunks.append(b)


def spawn_main():
    """Entry point of a spawned child (see get_command_line: fd=, ppid=,
    main=) or of a spare (spare=: the socket, descriptor 3, on which it
    waits for the child it is to become; see popen_spawn_posix)."""
    assert is_forking(sys.argv), 'spawn_main() is run by cmp in a spawned child'
    kw = dict(arg.split('=', 1) for arg in sys.argv[2:])
    if 'spare' in kw:
        sock = int(kw['spare'])
        try:
            os.write(sock, b'r')    # ready (the parent starts more if it waited)
        except OSError:
            pass                    # the parent already sent its request and closed

        try:
            request = _core.recv_request(sock)
        except OSError:
            request = None
        if request is None:
            os._exit(0)         # not needed after all: the parent is gone or done
        data, fds = request
        (targets, main), offset = _load_prefixed(data, 0)
        _core.place_fds(fds, targets)
        for fd in {0, 1, 2}.difference(targets):
            os.close(fd)        # closed in the parent when it started us
        _run(memoryview(data)[offset:], os.getppid(), main)
    fd = int(kw['fd'])
    data = _read_all(fd)
    os.close(fd)
    _run(data, int(kw['ppid']), kw.get('main') == '1')


def _run(data, ppid, main_thread_spawned):
    # The parent's sentinel: a pidfd, valid only if the parent is still ours.
    try:
        parent_sentinel = _core.pidfd_open(ppid)
    except OSError:
        parent_sentinel = None
    if parent_sentinel is not None and os.getppid() != ppid:
        os.close(parent_sentinel)
        parent_sentinel = None

    def before_run(process_obj):
        if process_obj.daemon:
            _die_with_parent(ppid, parent_sentinel, main_thread_spawned)
    sys.exit(_prepare_and_run(data, parent_sentinel, before_run))


def _main(fd, parent_sentinel, before_run=None):
    """Read the preparation data and the Process object from fd (closing
    it), prepare, and run the process; its exit code (the stdlib's name)."""
    data = _read_all(fd)
    os.close(fd)
    return _prepare_and_run(data, parent_sentinel, before_run)


def _prepare_and_run(data, parent_sentinel, before_run=None):
    process.current_process()._inheriting = True
    try:
        preparation, size = _load_prefixed(data, 0)
        prepare(preparation)
        process_obj, _ = _load_prefixed(data, size)
    finally:
        del process.current_process()._inheriting
    del data
    if before_run is not None:
        before_run(process_obj)
    return process_obj._bootstrap(parent_sentinel=parent_sentinel)


def _die_with_parent(ppid, parent_pidfd, main_thread_spawned):
    if parent_pidfd is None:            # the parent is already gone
        os._exit(1)
    if main_thread_spawned:
        _core.die_with_parent(ppid)
    else:
        _core.die_with_parent(ppid, os.dup(parent_pidfd))


def _load_prefixed(data, offset):
    """One length-prefixed pickle from data at offset: (object, next offset)."""
    n = int.from_bytes(data[offset:offset + 8], 'little')
    start = offset + 8
    return pickle.loads(data[start:start + n]), start + n


def pickle_for_child(popen, process_obj, base=None, tracker_pid=None):
    """What a child started by `popen` reads: the preparation data and the
    Process object, pickled while `popen` is the spawning one (so objects
    that carry descriptors or shared state may pickle, through
    popen.duplicate_for_child). The child shares this process's resource
    tracker. A child of the fork server already is what `base` says and
    uses the tracker of `tracker_pid`: it is sent only what differs."""
    from . import resource_tracker
    data = bytearray()
    context.set_spawning_popen(popen)
    try:
        prep = get_preparation_data(process_obj._name)
        if base is not None:
            prep = {k: v for k, v in prep.items() if k not in base or base[k] != v}
        if tracker_pid is None or resource_tracker._current()[2] != tracker_pid:
            prep['resource_tracker'] = resource_tracker._for_child()
        dump_prefixed(prep, data)
        dump_prefixed(process_obj, data)
    finally:
        context.set_spawning_popen(None)
    return data


def dump_prefixed(obj, out):
    """Append one length-prefixed pickle of obj (ForkingPickler) to bytearray out."""
    from .reduction import ForkingPickler
    payload = ForkingPickler.dumps(obj)
    out += len(payload).to_bytes(8, 'little')
    out += payload

