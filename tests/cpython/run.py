"""CPython's own multiprocessing tests, under `python -m cmp` or on the stdlib.

    python tests/cpython/run.py [METHOD...] [--stdlib] [--record] [-j N] [-k PATTERN]
                                [--timeout S] [--json PATH] [--logs DIR] [-v]

For each start method (default: fork spawn forkserver) the module mp_METHOD.py
calls test._test_multiprocessing.install_tests_in_module_dict(globals(), METHOD),
as CPython's test_multiprocessing_METHOD does. Each test class runs in its own
interpreter (worker.py) under a time limit, so a hang costs one class; -j classes
run at once. Without --stdlib the workers run under `python -m cmp`, where every
test checks that nothing of the stdlib's multiprocessing was imported.

--stdlib --record stores the stdlib's results for this Python in
stdlib-3.X.json beside this file, which tests/test_cpython_suite.py compares cmp with.
"""
import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, 'worker.py')
METHODS = ('fork', 'spawn', 'forkserver')
STATUSES = ('pass', 'fail', 'error', 'skip', 'xfail', 'xpass', 'timeout', 'stdlib')
CLASS_TIMEOUT = 360     # the stdlib's slowest class (3.11 WithThreadsTestPool) takes 300 s

# Tests of the stdlib's own implementation, which do not apply to cmp: a test
# passing on the stdlib and failing on cmp is not counted against cmp if it is
# here. Keys are test ids without the module (Class.test_name); keep it short.
NOT_APPLICABLE = {
    # check_invariant() reads the three semaphores the stdlib's Condition is
    # made of; cmp's Condition is one futex condition variable, without them.
    'WithProcessesTestCondition.test_notify': 'reads Condition._sleeping_count',
    'WithProcessesTestCondition.test_notify_all': 'reads Condition._sleeping_count',
    'WithProcessesTestCondition.test_notify_n': 'reads Condition._sleeping_count',
    # cmp pickles in put() and raises there; the stdlib's feeder thread prints
    # the error later and drops the item (README: Differences).
    'WithProcessesTestQueue.test_queue_feeder_donot_stop_onexc':
        'expects put() of an unpicklable item not to raise',
    # The stdlib refuses to pass a fork context's Queue to a spawn or forkserver
    # child (its semaphores would not survive); cmp's queues work under every method.
    'TestStartMethod.test_mixed_startmethod':
        "expects a fork context's Queue to fail in a spawned child",
    # It completes the stdlib's HMAC challenge with the fork server through
    # connection.Client; cmp's server reads the key from the request's header
    # in one message, without that round trip (test_forkserver_without_auth_fails
    # does apply: a wrong key raises AuthenticationError).
    'WithProcessesTestProcess.test_forkserver_auth_is_enabled':
        "runs the stdlib's challenge handshake with the fork server",
}


def version():
    return '%d.%d' % sys.version_info[:2]


def record_path(ver=None):
    return os.path.join(HERE, 'stdlib-%s.json' % (ver or version()))


def unavailable():
    """Why CPython's multiprocessing tests cannot run here, or None."""
    try:
        import test
    except ImportError:
        return 'this Python has no test package'
    path = os.path.join(os.path.dirname(test.__file__), '_test_multiprocessing.py')
    if not os.path.exists(path):
        return 'this Python has no test._test_multiprocessing'
    return None


def short(test_id):
    """mp_fork.WithProcessesTestLock.test_lock -> WithProcessesTestLock.test_lock"""
    return test_id.split('.', 1)[1] if test_id.startswith('mp_') else test_id


def _python(on_cmp):
    return [sys.executable, '-m', 'cmp'] if on_cmp else [sys.executable]


def _env(on_cmp=False):
    env = dict(os.environ)
    env['CMP_SUITE_SIDE'] = 'cmp' if on_cmp else 'stdlib'     # the worker checks it
    env['PYTHONPATH'] = os.pathsep.join([HERE] + [p for p in [env.get('PYTHONPATH')] if p])
    env.pop('PYTHONWARNINGS', None)
    return env


def list_classes(method):
    """{class name: [test ids]}, listed on the stdlib (the classes are the same)."""
    out = subprocess.run([sys.executable, WORKER, method, '--list'], cwd=HERE, env=_env(),
                         stdout=subprocess.PIPE, check=True, timeout=120)
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def _kill_session(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_class(method, cls, ids, on_cmp, timeout, logdir):
    """Run one class in its own interpreter; return
    ({test id: (status, detail, seconds)}, the class's seconds)."""
    fd, out_path = tempfile.mkstemp(prefix='cpy-%s-' % cls, suffix='.jsonl')
    os.close(fd)
    log_path = os.path.join(logdir, '%s.%s.log' % (method, cls))
    started = time.monotonic()
    timed_out = False
    with open(log_path, 'wb') as log:
        # Its own session: on a timeout, and after it ends, everything it left running dies.
        proc = subprocess.Popen(_python(on_cmp) + [WORKER, method, cls, out_path], cwd=HERE,
                                env=_env(on_cmp), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_session(proc)
            rc = proc.wait()
        _kill_session(proc)
    seconds = time.monotonic() - started
    results, fixture = {}, None
    with open(out_path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get('fixture'):
                fixture = fixture or (rec['status'], '%s: %s' % (rec['id'], rec['detail']), None)
            else:
                results[rec['id']] = (rec['status'], rec['detail'], rec.get('seconds'))
    os.unlink(out_path)
    # Tests that never reported: the class timed out, crashed, or its fixture failed.
    if timed_out:
        missing = ('timeout', 'class killed after %ds' % timeout, None)
    elif fixture:
        missing = fixture
    else:
        missing = ('error', 'worker exited with %s before the test ran (log: %s)'
                   % (rc, log_path), None)
    for tid in ids:
        results.setdefault(tid, missing)
    return results, seconds


def run_method(method, on_cmp=True, jobs=2, pattern=None, timeout=CLASS_TIMEOUT,
               logdir=None, progress=None, only=None):
    """Run METHOD's tests (only the classes named in only, if given); return
    ({short test id: (status, detail, seconds)}, seconds)."""
    classes = list_classes(method)
    if only is not None:
        classes = {c: ids for c, ids in classes.items() if c in only}
    if pattern:
        classes = {c: ids for c, ids in classes.items()
                   if fnmatch.fnmatch(c, pattern) or any(fnmatch.fnmatch(short(t), pattern)
                                                          for t in ids)}
    logdir = logdir or tempfile.mkdtemp(prefix='cpy-logs-')
    os.makedirs(logdir, exist_ok=True)
    # Longest-looking classes first, so a slow one does not finish the run alone.
    order = sorted(classes, key=lambda c: -len(classes[c]))
    results = {}
    started = time.monotonic()
    with ThreadPoolExecutor(jobs) as ex:
        futures = {ex.submit(run_class, method, c, classes[c], on_cmp, timeout, logdir): c
                   for c in order}
        for future in as_completed(futures):
            c = futures[future]
            res, secs = future.result()
            results.update((short(t), r) for t, r in res.items())
            if progress:
                progress(method, c, res, secs)
    return results, time.monotonic() - started


def counts(results):
    c = dict.fromkeys(STATUSES, 0)
    for status, *_ in results.values():
        c[status] += 1
    return {k: v for k, v in c.items() if v}


def passed(results):
    return sorted(t for t, (status, *_) in results.items() if status == 'pass')


def load_record(ver=None):
    try:
        with open(record_path(ver)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def save_record(method, results):
    record = load_record() or {'python': version(), 'methods': {}}
    record['python'] = version()
    record['full_version'] = sys.version.split()[0]
    record['methods'][method] = {'counts': counts(results), 'passed': passed(results)}
    with open(record_path(), 'w') as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write('\n')


def compare(method, results, stdlib_passed):
    """What cmp fails of what the stdlib passes: ({id: (status, detail, seconds)},
    exempted ids)."""
    ours = set(passed(results))
    lost = {t: results.get(t, ('missing', None, None)) for t in stdlib_passed if t not in ours}
    exempt = sorted(t for t in lost if t in NOT_APPLICABLE)
    for t in exempt:
        del lost[t]
    return lost, exempt


def _print_progress(verbose):
    def progress(method, cls, res, secs):
        c = counts(res)
        bad = {k: v for k, v in c.items() if k not in ('pass', 'skip')}
        print('%-10s %-48s %5.1fs %s' % (method, cls, secs, ' '.join(
            '%s=%d' % kv for kv in sorted(c.items()))), flush=True)
        if verbose and bad:
            for t, (status, detail, _) in sorted(res.items()):
                if status not in ('pass', 'skip'):
                    last = (detail or '').strip().splitlines()[-1:] or ['']
                    print('    %-7s %s: %s' % (status, short(t), last[0][:200]), flush=True)
    return progress


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('methods', nargs='*', default=list(METHODS))
    p.add_argument('--stdlib', action='store_true', help="run on the stdlib, not on cmp")
    p.add_argument('--record', action='store_true',
                   help='with --stdlib: store the results in stdlib-%s.json' % version())
    p.add_argument('-j', '--jobs', type=int, default=2)
    p.add_argument('-k', dest='pattern', help='only classes or Class.test ids matching this glob')
    p.add_argument('--timeout', type=float, default=CLASS_TIMEOUT, help='per class, seconds')
    p.add_argument('--json', help='write every result here')
    p.add_argument('--logs', help='keep each class log in this folder')
    p.add_argument('-v', '--verbose', action='store_true', help='show each failure')
    p.add_argument('--slowest', type=int, default=0, metavar='N', help='show the N slowest tests')
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        print('skipped:', why)
        return 0
    if args.record and (not args.stdlib or args.pattern):
        p.error('--record needs --stdlib and no -k')
    for m in args.methods:
        if m not in METHODS:
            p.error('unknown start method %r' % m)
    everything, rc = {}, 0
    record = None if args.stdlib else load_record()
    for method in args.methods:
        results, secs = run_method(method, not args.stdlib, args.jobs, args.pattern,
                                   args.timeout, args.logs, _print_progress(args.verbose))
        everything[method] = {t: list(r) for t, r in results.items()}
        side = 'stdlib' if args.stdlib else 'cmp'
        print('== %s %s on Python %s: %s in %.0fs' % (side, method, version(), ' '.join(
            '%s=%d' % kv for kv in sorted(counts(results).items())), secs), flush=True)
        for t, (status, _, secs) in sorted(results.items(), key=lambda kv: -(kv[1][2] or 0))[
                :args.slowest]:
            print('   %6.1fs %-7s %s' % (secs or 0, status, t))
        if args.record:
            save_record(method, results)
        if record and method in record['methods'] and not args.pattern:
            lost, exempt = compare(method, results, record['methods'][method]['passed'])
            print('   stdlib passed %d; cmp passed %d; of the stdlib\'s passes cmp fails %d'
                  ' (+%d not applicable)' % (len(record['methods'][method]['passed']),
                                             len(passed(results)), len(lost), len(exempt)))
            for t, (status, *_) in sorted(lost.items()):
                print('     %-7s %s' % (status, t))
            rc = rc or (1 if lost else 0)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(everything, f, indent=1, sort_keys=True)
    return rc


if __name__ == '__main__':
    sys.exit(main())
