"""python -m cmp bench: the same workloads on cmp and on multiprocessing.

    python -m cmp bench [WORKLOAD...] [--repeat N] [--scale X] [--out DIR]
                        [--json PATH] [--timeout S] [--list]

A workload file is `bench_<area>.py` beside this one, defining
`WORKLOADS = {'area.name': (fn, 'unit'), ...}` where `fn(mp, scale=1.0)`
does about `scale` times its normal amount of work with `mp` being
`multiprocessing` or `cmp`, times the measured part itself, and returns
`(count, seconds)`; its rate is count / seconds, in `unit` per second
('starts' or 'starts/s' alike).

Each repetition of each workload runs in a fresh interpreter per side. The
runs go round by round (every workload once per round), the two sides of a
workload back to back, cmp first in even rounds and the stdlib first in odd
ones, so slow drifts of a shared machine fall on both sides alike. The table
gives each side's median rate, the ratio of the medians (cmp/stdlib above 1:
cmp is faster) and the range of the per-round ratios. A run that fails or
times out is reported, not fatal; a side that fails its first run, or times
out, is not run again for that workload.

WORKLOAD arguments select by name, by dotted parts in order (`process`,
`process.start_join`, `fork` and `process.fork` all select
`process.start_join.fork`; `fork` does not select `...forkserver`) or by
glob (`*server`).

Writes DIR/bench-<time>.json (every raw sample) and DIR/bench-<time>.png (a
chart of the ratios) when matplotlib is installed. Exit status: 0 when every
run succeeded, 1 when a run failed or a workload file did not import, 2 for
usage errors, 130 when interrupted (the runs done so far are still reported).
"""
import argparse
import datetime
import fnmatch
import glob
import importlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Table label -> module imported as `mp` on that side.
SIDES = {'cmp': 'cmp', 'stdlib': 'multiprocessing'}

DEFAULT_REPEAT = 5
DEFAULT_TIMEOUT = 120.0
DEFAULT_OUT = 'bench-results'

# What a fresh interpreter runs for one sample. `python -c` leaves no main
# module file, so spawn and forkserver children do not re-run anything.
RUNNER = r'''
import importlib, json, sys
module, name, impl, scale, out = sys.argv[1:]
mp = importlib.import_module(impl)
fn, unit = importlib.import_module(module).WORKLOADS[name]
count, seconds = fn(mp, scale=float(scale))
with open(out, 'w') as f:
    json.dump({'count': count, 'seconds': seconds, 'module_file': mp.__file__}, f)
'''


# ---------------------------------------------------------------------------
# Discovery and selection

class Workload:
    __slots__ = ('name', 'unit', 'module', 'fn')

    def __init__(self, name, unit, module, fn):
        self.name, self.unit, self.module, self.fn = name, unit, module, fn


def rate_unit(unit):
    """'starts/s' stays, 'blocks' becomes 'blocks/s': rates are per second."""
    return unit if unit.endswith('/s') else unit + '/s'


def discover(folder=HERE):
    """([Workload] in file then definition order, {file name: import error})."""
    if folder not in sys.path:
        sys.path.insert(0, folder)
    workloads, errors, seen = [], {}, {}
    for path in sorted(glob.glob(os.path.join(folder, 'bench_*.py'))):
        module = os.path.splitext(os.path.basename(path))[0]
        try:
            table = importlib.import_module(module).WORKLOADS
            found = []
            for name, (fn, unit) in table.items():
                if not (isinstance(name, str) and callable(fn) and isinstance(unit, str)):
                    raise TypeError('WORKLOADS[%r] is not (callable, unit string)' % (name,))
                if name in seen:
                    raise ValueError('workload %r is also defined in %s.py' % (name, seen[name]))
                found.append(Workload(name, unit, module, fn))
        except Exception as e:
            errors[os.path.basename(path)] = '%s: %s' % (type(e).__name__, e)
            continue
        for w in found:
            seen[w.name] = module
        workloads += found
    return workloads, errors


def matches(name, pattern):
    """By glob ('*.fork') or by dotted parts in order: 'process',
    'process.start_join', 'fork', 'process.fork' all select
    'process.start_join.fork' (and 'fork' does not select '...forkserver')."""
    if fnmatch.fnmatchcase(name, pattern):
        return True
    parts = iter(name.split('.'))
    return all(part in parts for part in pattern.split('.'))


def select(workloads, patterns):
    """(the workloads some pattern matches, in discovery order; patterns matching none)."""
    if not patterns:
        return list(workloads), []
    unknown = [p for p in patterns if not any(matches(w.name, p) for w in workloads)]
    chosen = [w for w in workloads if any(matches(w.name, p) for p in patterns)]
    return chosen, unknown


# ---------------------------------------------------------------------------
# One run

def child_env():
    """The harness's environment with the workload folder importable, so that
    spawned children can unpickle a workload's target functions."""
    env = dict(os.environ)
    path = env.get('PYTHONPATH')
    env['PYTHONPATH'] = HERE + (os.pathsep + path if path else '')
    return env


def _killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ''


def run_once(workload, side, scale, timeout, env=None):
    """Run one workload once on one side ('cmp' or 'stdlib') in a fresh
    interpreter; a sample dict with ok, rate, count, seconds or error."""
    sample = {'side': side, 'ok': False}
    with tempfile.TemporaryDirectory(prefix='cmp-bench-') as tmp:
        out = os.path.join(tmp, 'result.json')
        cmd = [sys.executable, '-c', RUNNER, workload.module, workload.name,
               SIDES[side], repr(float(scale)), out]
        with open(os.path.join(tmp, 'stderr'), 'w+b') as err:
            t0 = time.monotonic()
            # Its own session: a timeout kills the whole tree, and leftovers
            # (a fork server, a resource tracker) go with it afterwards.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=env if env is not None else child_env(),
                                    start_new_session=True)
            try:
                returncode = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                returncode = None
                _killpg(proc.pid)
                proc.wait()
            except BaseException:
                _killpg(proc.pid)
                proc.wait()
                raise
            _killpg(proc.pid)   # whatever the run left behind
            sample['wall'] = round(time.monotonic() - t0, 4)
            err.seek(0)
            stderr = err.read().decode('utf-8', 'replace')
        if returncode is None:
            sample.update(timed_out=True, error='timed out after %gs' % timeout)
        elif returncode != 0:
            reason = _last_line(stderr)
            if returncode < 0:
                try:
                    signame = signal.Signals(-returncode).name
                except ValueError:
                    signame = 'signal %d' % -returncode
                reason = 'killed by %s' % signame + (': ' + reason if reason else '')
            sample['error'] = reason or 'exit status %d' % returncode
        else:
            try:
                with open(out) as f:
                    result = json.load(f)
                count, seconds = result['count'], result['seconds']
                if not (count > 0 and seconds > 0 and math.isfinite(count / seconds)):
                    raise ValueError('count %r, seconds %r' % (count, seconds))
            except (OSError, ValueError, KeyError, TypeError) as e:
                sample['error'] = 'bad result: %s' % e
            else:
                sample.update(ok=True, count=count, seconds=seconds, rate=count / seconds,
                              module_file=result.get('module_file'))
    if not sample['ok'] and stderr.strip():
        sample['stderr'] = '\n'.join(stderr.splitlines()[-20:])
    return sample


# ---------------------------------------------------------------------------
# Progress on stderr

def _clock(seconds):
    seconds = int(round(seconds))
    return '%d:%02d' % divmod(seconds, 60)


class Progress:
    """A one-line bar redrawn in place on a terminal; otherwise one line per run."""

    def __init__(self, total, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.done = 0
        self.spent = 0.0        # wall time of the runs actually made
        self.made = 0
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def _eta(self):
        if not self.made:
            return ''
        return ' ~%s left' % _clock(self.spent / self.made * (self.total - self.done))

    def _draw(self, label):
        cols = shutil.get_terminal_size((80, 24)).columns
        width = 24
        filled = width * self.done // max(self.total, 1)
        line = '[%s%s] %d/%d%s  %s' % ('#' * filled, '.' * (width - filled), self.done,
                                      self.total, self._eta(), label)
        self.stream.write('\r' + line[:cols - 1] + '\033[K')
        self.stream.flush()

    def start(self, label):
        if self.tty:
            self._draw(label)

    def finish(self, label, sample, unit=''):
        self.done += 1
        if sample is None:
            text = 'skipped'
        else:
            self.made += 1
            self.spent += sample.get('wall', 0.0)
            text = ('%s %s' % (fmt_num(sample['rate']), unit) if sample['ok']
                    else 'FAILED: ' + sample['error'])
        if not self.tty:
            self.stream.write('[%*d/%d] %s: %s\n' % (len(str(self.total)), self.done,
                                                    self.total, label, text))
            self.stream.flush()
        elif sample is not None and not sample['ok']:
            self.stream.write('\r\033[K%s: %s\n' % (label, text))
            self._draw(label)
        else:
            self._draw(label)

    def close(self):
        if self.tty:
            self.stream.write('\r\033[K')
            self.stream.flush()


# ---------------------------------------------------------------------------
# Running everything

def plan(workloads, repeat):
    """(round, workload, side) in run order."""
    order = []
    for r in range(repeat):
        sides = ('cmp', 'stdlib') if r % 2 == 0 else ('stdlib', 'cmp')
        for w in workloads:
            for side in sides:
                order.append((r, w, side))
    return order


def run_all(workloads, samples, repeat, scale, timeout, progress):
    """Fill samples[name][side] with sample dicts; stops early on KeyboardInterrupt."""
    given_up = set()
    env = child_env()
    for r, w, side in plan(workloads, repeat):
        label = '%s %s #%d' % (w.name, side, r + 1)
        if (w.name, side) in given_up:
            progress.finish(label, None)
            continue
        progress.start(label)
        sample = run_once(w, side, scale, timeout, env)
        sample['round'] = r
        samples[w.name][side].append(sample)
        progress.finish(label, sample, rate_unit(w.unit))
        if sample.get('timed_out') or (not sample['ok'] and r == 0):
            given_up.add((w.name, side))


def summarize(w, by_side, repeat):
    """The row of the table (and of the JSON) for one workload."""
    row = {'name': w.name, 'unit': rate_unit(w.unit), 'file': w.module + '.py', 'median': {},
           'runs': {}, 'ratio': None, 'ratio_min': None, 'ratio_max': None, 'pairs': 0}
    ok = {}
    for side in SIDES:
        ok[side] = {s['round']: s['rate'] for s in by_side[side] if s['ok']}
        row['median'][side] = statistics.median(ok[side].values()) if ok[side] else None
        row['runs'][side] = {'ok': len(ok[side]), 'failed': len(by_side[side]) - len(ok[side]),
                             'skipped': repeat - len(by_side[side])}
    if row['median']['cmp'] and row['median']['stdlib']:
        row['ratio'] = row['median']['cmp'] / row['median']['stdlib']
    paired = [ok['cmp'][r] / ok['stdlib'][r] for r in ok['cmp'] if r in ok['stdlib']]
    if paired:
        row.update(ratio_min=min(paired), ratio_max=max(paired), pairs=len(paired))
    row['samples'] = by_side
    return row


# ---------------------------------------------------------------------------
# Reporting

def fmt_num(x):
    """Three significant digits with a k/M/G suffix: 552, 23.3, 12.3k, 1.5M."""
    if x is None:
        return '-'
    for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k'), (1.0, '')):
        if abs(x) >= scale * 0.9995:
            return '%.3g%s' % (x / scale, suffix)
    return '%.3g' % x


def _rate_cell(row, side):
    runs = row['runs'][side]
    if not runs['ok']:
        failures = [s for s in row['samples'][side] if not s['ok']]
        if any(s.get('timed_out') for s in failures):
            return 'TIMEOUT'
        return 'FAILED' if failures else '-'
    cell = fmt_num(row['median'][side])
    return cell + ('*' if runs['failed'] else '')


def machine_facts():
    facts = {
        'cpu_count': os.cpu_count(),
        'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
        'cpu_model': None,
        'python': '%s %s' % (platform.python_implementation(), platform.python_version()),
        'executable': sys.executable,
        'kernel': '%s %s' % (platform.system(), platform.release()),
        'arch': platform.machine(),
        'loadavg_start': None,
    }
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    facts['cpu_model'] = ' '.join(line.split(':', 1)[1].split())
                    break
    except OSError:
        pass
    try:
        facts['loadavg_start'] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return facts


def cmp_facts():
    """Where the cmp that the runs import lives, and its git commit if any."""
    import importlib.util
    facts = {'file': None, 'commit': None}
    try:
        spec = importlib.util.find_spec('cmp')
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return facts
    facts['file'] = spec.origin
    try:
        top = os.path.dirname(os.path.dirname(spec.origin))
        out = subprocess.run(['git', '-C', top, 'describe', '--always', '--dirty'],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            facts['commit'] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


def machine_line(m):
    cpus = '%s CPUs' % m['cpu_count']
    if m['cpus_usable'] is not None and m['cpus_usable'] != m['cpu_count']:
        cpus += ' (%d usable)' % m['cpus_usable']
    parts = [cpus]
    if m['cpu_model']:
        parts.append(m['cpu_model'])
    parts += [m['python'], '%s %s' % (m['kernel'], m['arch'])]
    if m.get('loadavg_start') is not None:
        load = 'load %s' % ' '.join('%.2f' % x for x in m['loadavg_start'])
        if m.get('loadavg_end') is not None:
            load += ' -> %s' % ' '.join('%.2f' % x for x in m['loadavg_end'])
        parts.append(load)
    return 'machine: ' + ', '.join(parts)


def format_table(rows, report):
    head = ('workload', 'unit', 'stdlib', 'cmp', 'cmp/stdlib', 'min-max', 'n')
    body = []
    for row in rows:
        ratio = '%.2f' % row['ratio'] if row['ratio'] is not None else '-'
        spread = ('%.2f-%.2f' % (row['ratio_min'], row['ratio_max'])
                  if row['pairs'] else '-')
        body.append((row['name'], row['unit'], _rate_cell(row, 'stdlib'),
                     _rate_cell(row, 'cmp'), ratio, spread, str(row['pairs'])))
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    left = {0, 1}

    def line(cells):
        return '  '.join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = ['median rates of %d run(s) per side at scale %g; cmp/stdlib above 1: cmp is faster'
           % (report['repeat'], report['scale']),
           line(head), line(['-' * w for w in widths])]
    out += [line(cells) for cells in body]
    notes = []
    for row in rows:
        for side in SIDES:
            runs = row['runs'][side]
            failures = [s for s in row['samples'][side] if not s['ok']]
            if not failures:
                continue
            note = '%s, %s: %d of %d run(s) failed' % (row['name'], side, runs['failed'],
                                                       runs['failed'] + runs['ok'])
            if runs['skipped']:
                note += ' (%d not run)' % runs['skipped']
            notes.append(note + ': ' + failures[0]['error'])
    if any(row['runs'][s]['failed'] and row['runs'][s]['ok'] for row in rows for s in SIDES):
        notes.append('* median of the successful runs only')
    for name, error in sorted(report['import_errors'].items()):
        notes.append('%s did not import: %s' % (name, error))
    if report['interrupted']:
        notes.append('interrupted: results so far')
    out += [''] + notes if notes else []
    out += ['', machine_line(report['machine'])]
    if report['cmp']['file']:
        out.append('cmp: %s%s' % (os.path.dirname(report['cmp']['file']),
                                  ' (%s)' % report['cmp']['commit']
                                  if report['cmp']['commit'] else ''))
    return '\n'.join(out)


def plot(rows, path, report):
    """A PNG bar chart of the ratios; (path, None) or (None, why it was skipped)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except Exception as e:
        return None, 'chart skipped: matplotlib does not import (%s)' % e
    names = [row['name'] for row in rows]
    y = list(range(len(rows)))[::-1]         # first workload on top
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.45 * len(rows)))
    low = high = 1.0
    for yi, row in zip(y, rows):
        r = row['ratio']
        if r is None:
            ax.text(1.0, yi, '  failed: ' + ', '.join(
                side for side in SIDES if not row['runs'][side]['ok']),
                va='center', ha='left', color='0.3', fontsize=9)
            continue
        lo = row['ratio_min'] if row['pairs'] else r
        hi = row['ratio_max'] if row['pairs'] else r
        low, high = min(low, lo), max(high, hi)
        ax.barh(yi, r - 1.0, left=1.0, height=0.6,
                color='#3a8f4b' if r >= 1.0 else '#c0504d', alpha=0.85)
        if row['pairs'] > 1:
            ax.errorbar(r, yi, xerr=[[r - lo], [hi - r]], fmt='none', ecolor='0.2',
                        capsize=3, lw=1)
        ax.text(hi if r >= 1.0 else lo, yi, ' %.2fx ' % r, va='center',
                ha='left' if r >= 1.0 else 'right', fontsize=9)
    # Each side of 1 as wide as its data needs (room for the labels), at
    # least a factor of 2, so the ticks never crowd an empty side.
    left, right = min(low, 0.5) / 1.6, max(high, 2.0) * 1.6
    ax.set_xscale('log')
    ax.set_xlim(left, right)
    ticks = [2.0 ** k for k in range(-12, 13) if left <= 2.0 ** k <= right]
    if len(ticks) > 10:
        ticks = [t for t in ticks if round(math.log2(t)) % 2 == 0]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: '%gx' % v))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color='black', lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel('cmp rate / stdlib rate (median of %d; bars: min-max of paired runs)'
                  % report['repeat'])
    ax.set_title('cmp vs multiprocessing: right of 1 is faster', fontsize=11)
    fig.text(0.01, 0.01, machine_line(report['machine'])[len('machine: '):],
             fontsize=7, color='0.35')
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path, None


# ---------------------------------------------------------------------------
# Command line

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='python -m cmp bench',
        description='Run workloads from benchmarks/bench_*.py on cmp and on multiprocessing, '
                    'alternately, and compare their median rates.')
    p.add_argument('workloads', nargs='*', metavar='WORKLOAD',
                   help='workload names, dotted parts of names, or globs (default: all)')
    p.add_argument('--repeat', '-r', type=int, metavar='N', default=DEFAULT_REPEAT,
                   help='runs per workload and side (default %(default)s)')
    p.add_argument('--scale', '-s', type=float, metavar='X', default=1.0,
                   help='amount of work per run relative to normal (default %(default)s)')
    p.add_argument('--timeout', type=float, metavar='S', default=DEFAULT_TIMEOUT,
                   help='seconds before a run is killed (default %(default)g)')
    p.add_argument('--out', '-o', default=DEFAULT_OUT, metavar='DIR',
                   help='folder for the JSON and PNG (default %(default)s/)')
    p.add_argument('--json', metavar='PATH', help='JSON results path (default OUT/bench-TIME.json)')
    p.add_argument('--list', '-l', action='store_true', help='list the workloads and exit')
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error('--repeat must be at least 1')
    if not (args.scale > 0 and math.isfinite(args.scale)):
        p.error('--scale must be a positive number')
    if not args.timeout > 0:
        p.error('--timeout must be positive')
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workloads, import_errors = discover()
    for name, error in sorted(import_errors.items()):
        print('cmp bench: %s did not import: %s' % (name, error), file=sys.stderr)
    chosen, unknown = select(workloads, args.workloads)
    if unknown:
        print('cmp bench: no workload matches %s; --list shows them'
              % ', '.join(map(repr, unknown)), file=sys.stderr)
        return 2
    if args.list:
        for w in chosen:
            print('%-40s %-12s %s.py' % (w.name, rate_unit(w.unit), w.module))
        return 1 if import_errors else 0
    if not chosen:
        print('cmp bench: no workloads found in %s' % HERE, file=sys.stderr)
        return 1 if import_errors else 2

    started = datetime.datetime.now(datetime.timezone.utc)
    report = {'format': 1, 'started': started.isoformat(timespec='seconds'),
              'argv': list(sys.argv[1:] if argv is None else argv), 'repeat': args.repeat,
              'scale': args.scale, 'timeout': args.timeout, 'machine': machine_facts(),
              'cmp': cmp_facts(), 'import_errors': import_errors, 'interrupted': False}
    samples = {w.name: {side: [] for side in SIDES} for w in chosen}
    progress = Progress(args.repeat * len(chosen) * len(SIDES))
    try:
        run_all(chosen, samples, args.repeat, args.scale, args.timeout, progress)
    except KeyboardInterrupt:
        report['interrupted'] = True
    finally:
        progress.close()
    try:
        report['machine']['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    report['finished'] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    rows = [summarize(w, samples[w.name], args.repeat) for w in chosen]
    report['workloads'] = rows
    print(format_table(rows, report))

    stem = 'bench-' + started.astimezone().strftime('%Y%m%d-%H%M%S')
    json_path = args.json or os.path.join(args.out, stem + '.json')
    os.makedirs(args.out, exist_ok=True)
    if os.path.dirname(json_path):
        os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, 'w') as f:
        json.dump(report, f, indent=1)
        f.write('\n')
    print('results: %s' % json_path)
    try:
        png, why = plot(rows, os.path.join(args.out, stem + '.png'), report)
    except Exception as e:
        png, why = None, 'chart failed: %s: %s' % (type(e).__name__, e)
    print('chart: %s' % png if png else why)
    sys.stdout.flush()

    if report['interrupted']:
        return 130
    failed = import_errors or any(s['ok'] is False for row in rows
                                  for side in SIDES for s in row['samples'][side])
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
