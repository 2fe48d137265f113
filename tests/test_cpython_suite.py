"""CPython's own multiprocessing tests under `python -m cmp` (tests/cpython/run.py).

For each start method in CMP_CPYTHON_SUITE (comma-separated; default
fork,spawn,forkserver; `none` runs none), every test that the stdlib passes on
this Python must pass on cmp too, except the few in run.NOT_APPLICABLE, which
probe the stdlib's own implementation. The stdlib's results come from
tests/cpython/stdlib-3.X.json (`run.py --stdlib --record`), or are measured now
where this Python has no record. CMP_CPYTHON_SUITE_JOBS classes run at once (2).
"""
import json
import os
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cpython'))
import run  # noqa: E402

JOBS = int(os.environ.get('CMP_CPYTHON_SUITE_JOBS', '2'))     # classes run at once
SELECTED = [m for m in os.environ.get('CMP_CPYTHON_SUITE', ','.join(run.METHODS)).split(',')
            if m and m != 'none']


def test_selection_names_start_methods():
    assert set(SELECTED) <= set(run.METHODS), \
        'CMP_CPYTHON_SUITE takes %s or none' % ','.join(run.METHODS)


def _stdlib_passed(method):
    record = run.load_record()
    if record and method in record['methods']:
        return record['methods'][method]['passed']
    return run.passed(run.run_method(method, on_cmp=False, jobs=JOBS)[0])


def _explain(lost):
    lines = []
    for tid, (status, detail, _) in sorted(lost.items()):
        last = (detail or '').strip().splitlines()[-1:] or ['']
        lines.append('%s %s: %s' % (status, tid, last[0][:300]))
    return '\n'.join(lines)


@pytest.mark.timeout(3600)
@pytest.mark.parametrize('method', SELECTED)
def test_cpython_multiprocessing_tests(method):
    why = run.unavailable()
    if why:
        pytest.skip(why)
    stdlib_passed = _stdlib_passed(method)
    results, _ = run.run_method(method, on_cmp=True, jobs=JOBS)
    lost, _ = run.compare(method, results, stdlib_passed)
    flaky = {t.split('.')[0] for t, (status, *_) in lost.items() if status != 'timeout'}
    if flaky:
        # Some of these tests time signals and sleeps: on a loaded machine one
        # can fail once. Their classes run again, alone; the second result
        # counts. (A class that hung is not given another 360 s.)
        again, _ = run.run_method(method, on_cmp=True, jobs=1, only=flaky)
        results.update(again)
        lost, _ = run.compare(method, results, stdlib_passed)
    assert not lost, '%d of the stdlib\'s passing tests fail on cmp (%s; stdlib passed %d, ' \
        'cmp %d: %s):\n%s' % (len(lost), method, len(stdlib_passed), len(run.passed(results)),
                              run.counts(results), _explain(lost))


@pytest.mark.timeout(300)
def test_interrupts_reach_tests_run_in_the_background():
    """A shell runs `run.py &` with SIGINT ignored; the tests that send one
    (here test_wait_result, which waits 60 s for its KeyboardInterrupt) must
    get it all the same."""
    why = run.unavailable()
    if why:
        pytest.skip(why)
    ignore_and_run = ('import os, signal, sys\n'
                      'signal.signal(signal.SIGINT, signal.SIG_IGN)\n'
                      'os.execv(sys.executable, [sys.executable] + sys.argv[1:])\n')
    test_id = 'WithProcessesTestCondition.test_wait_result'
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, 'results.json')
        subprocess.run([sys.executable, '-c', ignore_and_run, run.__file__, 'fork',
                        '-k', test_id, '--timeout', '50', '--json', out],
                       stdout=subprocess.DEVNULL, check=False, timeout=240)
        with open(out) as f:
            status, detail, _ = json.load(f)['fork'][test_id]
    assert status == 'pass', detail
