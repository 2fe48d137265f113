"""python -m cmp: run a multiprocessing program on cmp, or the benchmarks.

    python -m cmp SCRIPT [ARGS...]     run SCRIPT as __main__
    python -m cmp -m MODULE [ARGS...]  run MODULE as __main__
    python -m cmp bench [WORKLOAD...]  benchmarks: cmp against multiprocessing
    python -m cmp --cluster ADDRESS SCRIPT|-m MODULE [ARGS...]
                                       Pool and ProcessPoolExecutor tasks run on a
                                       Dask or Ray cluster: ADDRESS is dask,
                                       dask://HOST:PORT, tcp://HOST:PORT, ray or
                                       ray://HOST:PORT (or set CMP_CLUSTER)

Under the runner `import multiprocessing` and every `multiprocessing.X`
resolve to cmp, in this process and in every child it starts.
"""
import os
import sys

__all__ = []     # the runner; `from multiprocessing.__main__ import *` imports nothing

USAGE = __doc__.split('\n\n')[1]


def _trim(tb):
    """Drop the runner's own frames (this file, runpy) from a traceback."""
    import runpy
    skip = {os.path.normcase(os.path.abspath(f)) for f in (__file__, runpy.__file__)}
    while tb is not None and os.path.normcase(
            os.path.abspath(tb.tb_frame.f_code.co_filename)) in skip:
        tb = tb.tb_next
    return tb


def _run_guarded(body):
    """Run body() and report an uncaught exception as the interpreter would."""
    try:
        body()
    except SystemExit:
        raise
    except BaseException as exc:
        tb = _trim(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        if isinstance(exc, KeyboardInterrupt):
            # Like the interpreter: finish shutting down, then die by SIGINT.
            import atexit
            import signal
            atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        sys.exit(1)


def run_script(path, argv):
    import builtins
    import types
    try:
        with open(path, 'rb') as f:
            source = f.read()
    except OSError as e:
        sys.stderr.write("%s: can't open file %r: [Errno %d] %s\n"
                         % (sys.executable, os.path.abspath(path), e.errno, e.strerror))
        sys.exit(2)
    sys.argv = list(argv)                   # argv[0] as typed, like python
    path = os.path.abspath(path)            # __file__ and tracebacks: absolute (3.9+)
    sys.path[0] = os.path.dirname(path)
    main = types.ModuleType('__main__')
    main.__file__ = path
    main.__cached__ = None
    main.__builtins__ = builtins
    sys.modules['__main__'] = main

    def body():
        code = compile(source, path, 'exec', dont_inherit=True)
        exec(code, main.__dict__)
    _run_guarded(body)


def run_module(name, argv):
    import runpy
    sys.argv = list(argv)

    def body():
        runpy.run_module(name, run_name='__main__', alter_sys=True)
    _run_guarded(body)


def _benchmarks_dir():
    candidates = [os.environ.get('CMP_BENCHMARKS'), 'benchmarks',
                  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'benchmarks')]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, 'harness.py')):
            return os.path.abspath(c)
    sys.exit('cmp bench: no benchmarks/ folder found; run it from a cmp checkout '
             'or set CMP_BENCHMARKS')


def run_bench(argv):
    import runpy
    bench = _benchmarks_dir()
    sys.path.insert(0, bench)
    sys.argv = ['cmp bench'] + list(argv)
    harness = runpy.run_path(os.path.join(bench, 'harness.py'), run_name='cmp_bench')
    sys.exit(harness['main'](list(argv)))


def _cluster_option(args):
    """args without a leading --cluster ADDRESS (or --cluster=ADDRESS), which
    goes into CMP_CLUSTER for this process and its children."""
    if args[0].startswith('--cluster='):
        address, args = args[0][len('--cluster='):], args[1:]
    elif args[0] == '--cluster':
        if len(args) < 2:
            sys.exit('python -m cmp: --cluster needs an address')
        address, args = args[1], args[2:]
    else:
        return args
    if not args:
        sys.exit('python -m cmp: --cluster needs a script or -m module to run')
    os.environ['CMP_CLUSTER'] = address
    return args


def main():
    args = sys.argv[1:]
    if not args or args[0] in ('-h', '--help'):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        sys.exit(2 if not args else 0)
    if args[0] == 'bench':
        run_bench(args[1:])
    args = _cluster_option(args)
    from . import _alias
    _alias.install()
    _alias.propagate()
    if os.environ.get('CMP_CLUSTER'):
        from . import cluster
        try:
            cluster.install(os.environ['CMP_CLUSTER'])
        except (ImportError, ValueError) as e:
            sys.exit('python -m cmp: %s' % e)
    if args[0] == '-m':
        if len(args) < 2:
            sys.exit('python -m cmp: -m needs a module name')
        run_module(args[1], args[1:])
    else:
        run_script(args[0], args)


if __name__ == '__main__':
    main()
