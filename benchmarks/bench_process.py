"""Process workloads: the cost of starting and joining a child.

process.start_join.<method>: N sequential `ctx.Process(target=noop)`,
`start()`, `join()` under one start method. One untimed start+join first
pays the one-time costs (lazy imports, starting the fork server), so the
rate is that of a program that starts children steadily.

process.script_start_join.forkserver: the same, run as a script whose
target is in its main module (see _script_start_join).

process.paced_start_join.<method>: the same start+join, one every few
milliseconds, only the start+join timed: what a program that starts
children now and then (a server, a job runner) waits per start, with the
machine's other CPUs free meanwhile. Back to back on a machine with few
CPUs, the work done between starts (the fork server's next spare, the last
child's exit) competes with the starts themselves; here it does not.
"""
import time


def _compile_imports():
    """Byte-compile cmp as installing it would, and this module. A source
    checkout run with PYTHONDONTWRITEBYTECODE (or -B) has no bytecode for
    them, so every spawned child would compile cmp from source, while the
    stdlib's bytecode comes installed: that measures the checkout, not cmp;
    and every spawn or forkserver child, on either side, would compile this
    module (which holds its target) afresh.

    Called by the workload in the measuring process, never at import: every
    spawn and forkserver child imports this module to find its target, and
    compileall's imports (traceback, and from 3.14 _colorize, dataclasses,
    inspect, ast) would then cost each child several times a start, on
    both sides alike, hiding the start itself."""
    import compileall
    import importlib.util
    spec = importlib.util.find_spec('cmp')
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            compileall.compile_dir(folder, maxlevels=0, quiet=2)
    compileall.compile_file(__file__, quiet=2)


def _check(failed, count, method):
    if failed:
        raise RuntimeError('%d of %d children under %s did not exit with 0'
                           % (failed, count + 1, method))


def _noop():
    pass


def _start_join(method, n, pause=0.0):
    """N starts+joins, each after `pause` seconds of nothing (not timed)."""
    def start_join(mp, scale=1.0):
        _compile_imports()
        ctx = mp.get_context(method)
        count = max(1, round(n * scale))
        warm = ctx.Process(target=_noop)
        warm.start()
        warm.join()
        failed = 0
        seconds = 0.0
        for _ in range(count):
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            p = ctx.Process(target=_noop)
            p.start()
            p.join()
            seconds += time.perf_counter() - t0
            failed += p.exitcode != 0
        _check(failed + (warm.exitcode != 0), count, method)
        return count, seconds
    start_join.__name__ = ('paced_start_join_' if pause else 'start_join_') + method
    return start_join


_SCRIPT = '''
import sys, time
import importlib
mp = importlib.import_module(sys.argv[1])

def noop():
    pass

if __name__ == '__main__':
    ctx = mp.get_context(sys.argv[2])
    count = int(sys.argv[3])
    warm = ctx.Process(target=noop)
    warm.start()
    warm.join()
    failed = warm.exitcode != 0
    t0 = time.perf_counter()
    for _ in range(count):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
        failed += p.exitcode != 0
    print(count, time.perf_counter() - t0, failed)
'''


def _script_start_join(method, n):
    """The same loop in the shape of most programs: a script whose target
    is a function of its main module, started with `python script.py`. Under
    spawn and forkserver each child needs that module: the fork server
    imports it once (cmp, and the stdlib from 3.13); 3.11's stdlib server is
    never told its path, so each of its children runs it again."""
    def start_join(mp, scale=1.0):
        import os
        import subprocess
        import sys
        import tempfile
        count = max(1, round(n * scale))
        with tempfile.TemporaryDirectory(prefix='cmp-bench-') as tmp:
            script = os.path.join(tmp, 'start_join.py')
            with open(script, 'w') as f:
                f.write(_SCRIPT)
            out = subprocess.run([sys.executable, script, mp.__name__, method, str(count)],
                                 check=True, capture_output=True, text=True).stdout
        got, seconds, failed = out.split()
        _check(int(failed), count, method)
        return int(got), float(seconds)
    start_join.__name__ = 'script_start_join_' + method
    return start_join


# Counts chosen for about a second per run on a small machine.
WORKLOADS = {
    'process.start_join.fork': (_start_join('fork', 400), 'starts/s'),
    'process.start_join.spawn': (_start_join('spawn', 25), 'starts/s'),
    'process.start_join.forkserver': (_start_join('forkserver', 150), 'starts/s'),
    'process.script_start_join.forkserver': (_script_start_join('forkserver', 150), 'starts/s'),
    'process.paced_start_join.fork': (_start_join('fork', 150, pause=0.005), 'starts/s'),
    'process.paced_start_join.forkserver': (_start_join('forkserver', 150, pause=0.005),
                                            'starts/s'),
}
