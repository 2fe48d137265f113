"""The benchmark harness (`python -m cmp bench`) and every workload file.

Nothing here looks at speed: the harness must run, report and survive
failures, and every workload in benchmarks/bench_*.py must run on both sides.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from support import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, 'benchmarks')
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def load_harness():
    spec = importlib.util.spec_from_file_location(
        'cmp_bench_harness', os.path.join(BENCHMARKS, 'harness.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = load_harness()
WORKLOADS, IMPORT_ERRORS = harness.discover()


def bench(args, cwd, benchmarks=BENCHMARKS, timeout=100, env=None):
    """Run `python -m cmp bench ARGS`; (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, '-m', 'cmp', 'bench', *args], cwd=cwd,
                          env=child_env({'CMP_BENCHMARKS': benchmarks, **(env or {})}),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def table_rows(stdout):
    """{workload: [cells]} of the table's body."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('workload')) + 2
    rows = {}
    for line in lines[start:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def check_chart(stdout, out_dir):
    chart = [line for line in stdout.splitlines() if line.startswith('chart')]
    assert len(chart) == 1, stdout
    if chart[0].startswith('chart: '):
        path = chart[0][len('chart: '):]
        assert os.path.dirname(os.path.abspath(path)) == os.path.abspath(out_dir)
        with open(path, 'rb') as f:
            assert f.read(8) == PNG_MAGIC
    else:
        assert chart[0].startswith('chart skipped: matplotlib does not import'), chart


# ---------------------------------------------------------------------------
# The real workloads

def test_workload_files_import():
    assert not IMPORT_ERRORS
    names = [w.name for w in WORKLOADS]
    assert {'process.start_join.fork', 'process.start_join.spawn',
            'process.start_join.forkserver'} <= set(names)
    assert all(name.count('.') >= 1 for name in names), names


@pytest.mark.parametrize('side', ['stdlib', 'cmp'])
@pytest.mark.parametrize('workload', WORKLOADS, ids=lambda w: w.name)
def test_workload_runs(workload, side):
    if workload.name.startswith(('cluster.task.', 'cluster.cpu.')) and not workload.name.endswith('.local'):
        pytest.skip('each run starts a Dask or Ray cluster; tests/test_cluster.py runs Pool on both')
    sample = harness.run_once(workload, side, scale=0.01, timeout=100)
    assert sample['ok'], '%s\n%s' % (sample.get('error'), sample.get('stderr', ''))
    assert sample['count'] > 0 and sample['seconds'] > 0
    expected = 'cmp' if side == 'cmp' else 'multiprocessing'
    assert os.path.basename(os.path.dirname(sample['module_file'])) == expected


def test_smoke(tmp_path):
    out = tmp_path / 'results'
    code, stdout, stderr = bench(['process', '--scale', '0.01', '--repeat', '2',
                                  '--out', str(out), '--json', str(tmp_path / 'r.json')],
                                 cwd=tmp_path)
    assert code == 0, stdout + stderr
    names = [w.name for w in WORKLOADS if w.name.startswith('process.')]
    rows = table_rows(stdout)
    assert sorted(rows) == sorted(names)
    for cells in rows.values():
        unit, stdlib, cmp_rate, ratio, spread, pairs = cells
        assert unit == 'starts/s'
        assert pairs == '2'
        assert float(ratio) > 0
        lo, hi = map(float, spread.split('-'))
        assert 0 < lo <= hi
    assert 'machine: %d CPUs' % os.cpu_count() in stdout
    assert 'CPython %s' % '.'.join(map(str, sys.version_info[:3])) in stdout
    # Progress on stderr, one line per run when it is not a terminal.
    progress = [line for line in stderr.splitlines() if line.startswith('[')]
    assert len(progress) == 2 * 2 * len(names), stderr
    assert progress[-1].startswith('[%d/%d] ' % (len(progress), len(progress))), stderr

    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['repeat'] == 2 and report['scale'] == 0.01
    assert report['machine']['cpu_count'] == os.cpu_count()
    assert [row['name'] for row in report['workloads']] == names
    for row in report['workloads']:
        for side in ('cmp', 'stdlib'):
            samples = row['samples'][side]
            assert [s['round'] for s in samples] == [0, 1]
            assert all(s['ok'] and s['rate'] > 0 and s['count'] > 0 for s in samples)
            rates = sorted(s['rate'] for s in samples)
            assert row['median'][side] == pytest.approx((rates[0] + rates[1]) / 2)
        assert row['ratio'] == pytest.approx(row['median']['cmp'] / row['median']['stdlib'])
    check_chart(stdout, out)


def test_list_and_selection(tmp_path):
    code, stdout, _ = bench(['--list'], cwd=tmp_path)
    assert code == 0
    assert [line.split()[0] for line in stdout.splitlines()] == [w.name for w in WORKLOADS]
    code, stdout, _ = bench(['--list', 'fork', 'process.spawn'], cwd=tmp_path)
    assert code == 0
    assert stdout.split()[::3] == ['process.start_join.fork', 'process.start_join.spawn',
                                   'process.paced_start_join.fork']
    code, stdout, stderr = bench(['--list', 'process', 'nosuch'], cwd=tmp_path)
    assert code == 2 and stdout == ''
    assert "no workload matches 'nosuch'" in stderr
    code, _, stderr = bench(['--repeat', '0'], cwd=tmp_path)
    assert code == 2 and '--repeat must be at least 1' in stderr


def test_matching():
    m = harness.matches
    name = 'process.start_join.fork'
    for pattern in (name, 'process', 'process.start_join', 'fork', 'process.fork',
                    'start_join', '*.fork', 'process.*'):
        assert m(name, pattern), pattern
    for pattern in ('forkserver', 'process.start_join.forkserver', 'fork.process',
                    'proc', 'process.start', 'queue'):
        assert not m(name, pattern), pattern
    assert harness.rate_unit('starts/s') == 'starts/s'
    assert harness.rate_unit('blocks') == 'blocks/s'
    assert harness.fmt_num(552.2) == '552'
    assert harness.fmt_num(23.27) == '23.3'
    assert harness.fmt_num(999.8) == '1k'
    assert harness.fmt_num(12345) == '12.3k'
    assert harness.fmt_num(1.5e6) == '1.5M'
    assert harness.fmt_num(0.0123) == '0.0123'


# ---------------------------------------------------------------------------
# Failures are reported, not fatal

FAKE = r'''
import os, signal, time

def leave_child(name):
    """Fork a child that outlives this run unless the harness kills it."""
    pid = os.fork()
    if pid == 0:
        time.sleep(100)
        os._exit(0)
    with open(os.path.join(os.environ['FAKE_PIDS'], name), 'a') as f:
        f.write('%d\n' % pid)

def ok(mp, scale=1.0):
    leave_child('ok')
    return 10, 0.5

def fail_cmp(mp, scale=1.0):
    if mp.__name__ == 'cmp':
        raise RuntimeError('boom on cmp')
    return 5, 0.25

def hang(mp, scale=1.0):
    leave_child('hang')
    time.sleep(100)

def crash(mp, scale=1.0):
    if mp.__name__ == 'cmp':
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)

def bad(mp, scale=1.0):
    return 0, 0.0

WORKLOADS = {
    'fake.ok': (ok, 'ops'),
    'fake.fail_cmp': (fail_cmp, 'ops/s'),
    'fake.hang': (hang, 'ops/s'),
    'fake.crash': (crash, 'ops/s'),
    'fake.bad': (bad, 'ops/s'),
}
'''


@pytest.fixture
def fake_benchmarks(tmp_path, monkeypatch):
    folder = tmp_path / 'fakebench'
    folder.mkdir()
    shutil.copy(os.path.join(BENCHMARKS, 'harness.py'), folder)
    (folder / 'bench_fake.py').write_text(textwrap.dedent(FAKE))
    (folder / 'bench_broken.py').write_text('import no_such_module_for_cmp_bench\n')
    (tmp_path / 'pids').mkdir()
    monkeypatch.setenv('FAKE_PIDS', str(tmp_path / 'pids'))
    return folder


def gone(pid, within=10.0):
    """True once pid has exited (a zombie waiting for init counts as exited)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open('/proc/%d/stat' % pid) as f:
                state = f.read().rsplit(')', 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == 'Z':
            return True
        time.sleep(0.05)
    return False


def test_failures_are_reported(tmp_path, fake_benchmarks):
    code, stdout, stderr = bench(['--repeat', '2', '--timeout', '5', '--out',
                                  str(tmp_path / 'out'), '--json', str(tmp_path / 'r.json')],
                                 cwd=tmp_path, benchmarks=str(fake_benchmarks))
    assert code == 1 and stdout, stdout + stderr
    rows = table_rows(stdout)
    assert rows['fake.ok'] == ['ops/s', '20', '20', '1.00', '1.00-1.00', '2']
    assert rows['fake.fail_cmp'] == ['ops/s', '20', 'FAILED', '-', '-', '0']
    assert rows['fake.hang'] == ['ops/s', 'TIMEOUT', 'TIMEOUT', '-', '-', '0']
    assert rows['fake.crash'] == ['ops/s', 'FAILED', 'FAILED', '-', '-', '0']
    assert rows['fake.bad'] == ['ops/s', 'FAILED', 'FAILED', '-', '-', '0']
    assert ('fake.fail_cmp, cmp: 1 of 1 run(s) failed (1 not run): '
            'RuntimeError: boom on cmp') in stdout
    assert 'fake.hang, stdlib: 1 of 1 run(s) failed (1 not run): timed out after 5s' in stdout
    assert 'fake.crash, cmp: 1 of 1 run(s) failed (1 not run): exit status 3' in stdout
    assert 'fake.crash, stdlib: 1 of 1 run(s) failed (1 not run): killed by SIGKILL' in stdout
    assert 'fake.bad, stdlib: 1 of 1 run(s) failed (1 not run): bad result' in stdout
    assert ("bench_broken.py did not import: ModuleNotFoundError: No module named "
            "'no_such_module_for_cmp_bench'") in stdout
    assert 'did not import' in stderr
    check_chart(stdout, tmp_path / 'out')

    report = json.loads((tmp_path / 'r.json').read_text())
    by_name = {row['name']: row for row in report['workloads']}
    hung = by_name['fake.hang']['samples']['cmp']
    assert len(hung) == 1 and hung[0]['timed_out'] and hung[0]['wall'] < 60
    assert 'RuntimeError: boom on cmp' in by_name['fake.fail_cmp']['samples']['cmp'][0]['stderr']
    # Runs that timed out were killed with everything they started, and what
    # finished runs left behind was killed too.
    for name, runs in (('hang', 2), ('ok', 4)):
        pids = [int(p) for p in (tmp_path / 'pids' / name).read_text().split()]
        assert len(pids) == runs
        assert all(gone(pid) for pid in pids), name


def test_interrupt_reports_results_so_far(tmp_path, fake_benchmarks):
    proc = subprocess.Popen(
        [sys.executable, '-m', 'cmp', 'bench', 'fake.ok', 'fake.hang', '--timeout', '100',
         '--out', str(tmp_path / 'out'), '--json', str(tmp_path / 'r.json')],
        cwd=tmp_path, env=child_env({'CMP_BENCHMARKS': str(fake_benchmarks)}),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        done = 0
        while done < 2:                        # fake.ok on both sides
            line = proc.stderr.readline()
            assert line, 'harness exited early'
            done += 'fake.ok' in line
        deadline = time.monotonic() + 30       # then fake.hang is running
        while not (tmp_path / 'pids' / 'hang').exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    rows = table_rows(stdout)
    assert rows['fake.ok'][:4] == ['ops/s', '20', '20', '1.00']
    assert 'interrupted: results so far' in stdout
    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['interrupted'] is True
    pid = int((tmp_path / 'pids' / 'hang').read_text().split()[0])
    assert gone(pid)


def test_chart_skipped_without_matplotlib(tmp_path, fake_benchmarks):
    blocker = tmp_path / 'blocker' / 'matplotlib'
    blocker.mkdir(parents=True)
    (blocker / '__init__.py').write_text('raise ImportError("blocked for the test")\n')
    path = os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get('PYTHONPATH')]))
    code, stdout, stderr = bench(['fake.ok', '--repeat', '1', '--out', str(tmp_path / 'out')],
                                 cwd=tmp_path, benchmarks=str(fake_benchmarks),
                                 env={'PYTHONPATH': path})
    assert code == 1, stdout + stderr          # bench_broken.py
    assert table_rows(stdout)['fake.ok'][:4] == ['ops/s', '20', '20', '1.00']
    assert 'chart skipped: matplotlib does not import (blocked for the test)' in stdout
    assert [p.suffix for p in (tmp_path / 'out').iterdir()] == ['.json']
