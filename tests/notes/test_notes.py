"""The notes' examples, run under the stdlib and under cmp, and compared.

Every example in this folder (copied verbatim from the notes, with
manifest.json) runs twice: `python EXAMPLE` (the stdlib) and
`python -m cmp EXAMPLE`, each in a fresh temporary directory holding the
manifest's fixtures, fed the manifest's stdin, and stopped after the
manifest's seconds by killing its whole process group. What is compared is
what a person sees in a terminal:

- stdout is a pseudo-terminal, so Python line-buffers it as it would for a
  person (PYTHONUNBUFFERED is removed from the environment); stderr is a
  pipe; stdin is a pipe holding the manifest's stdin, then closed;
- the exit status, or that both were stopped; and that neither left
  processes running after its main process ended;
- the lines on stdout as a multiset, after masking pids, times, addresses
  and floats (and, where the output varies run to run, only what is stable:
  see VARIES);
- the type of the last error named on stderr.

All runs happen at once in a thread pool (one module fixture), longest
first, each example's two runs side by side, so the suite takes about as
long as its longest example (30 s): the examples mostly sleep.

Examples that need a part of cmp not built yet are strict xfails naming the
issue that brings it (NEEDS); the four that are broken as written in the
notes must fail the same way under both (BROKEN).
"""
import collections
import concurrent.futures
import dataclasses
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty

import pytest

from cmp import _versions

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, 'manifest.json'), encoding='utf-8') as _f:
    MANIFEST = {e['file']: e for e in json.load(_f)['examples']}

IMPLS = ('stdlib', 'cmp')

# ---------------------------------------------------------------------------
# What the examples need that cmp does not have yet: example -> the issues
# that bring it. Each issue deletes its own number here when it lands; the
# xfail is strict, so an example that starts passing fails until it does.

ISSUES = {
}
NEEDS = {
}

# ---------------------------------------------------------------------------
# What varies run to run (from the manifest's notes, and seen by running the
# stdlib against itself): only what is stable is compared.

@dataclasses.dataclass(frozen=True)
class Varies:
    strip: tuple = ()     # regexes: removed from stdout (output that lands mid-line)
    masks: tuple = ()     # regexes: their matches in stdout lines are masked
    drop: tuple = ()      # regexes: lines that may or may not appear
    shapes: bool = False  # which kinds of line appear (numbers masked), not how many
    cut: int = 0          # stopped midway: printed in order, either may lack its last `cut` lines
    errors: tuple = ()    # errors that may or may not end up on stderr


VARIES = {
    '000-11.py': Varies(shapes=True),    # how many the child sends before the pipe is full
    '000-23.py': Varies(cut=1),          # stopped while it counts once a second
    '002-09.py': Varies(cut=1),          # the main process stops the daemon child midway
    '002-13.py': Varies(masks=(r'^(True|False)$',),   # is_alive() right after terminate()
                        drop=(r'^子进程$',)),          # the child may print before it dies
    '002-15.py': Varies(shapes=True,     # no lock: who buys, and how many; a child
                        errors=('json.decoder.JSONDecodeError',)),  # may read a half-written file
    '002-16.py': Varies(masks=(r'user-\d+', r'(?<=余票：)\d+')),   # who gets the lock when
    '003-08.py': Varies(drop=(r'^<pid> Myprocess-1$', r'正在和女主播聊天$')),  # the daemon
                                         # child may print before the main process ends
    '003-17.py': Varies(shapes=True),    # random sleeps, stopped midway
    '003-19.py': Varies(masks=(r'^[34]$',)),  # each child adds 1 under one lock, then 1
                                         # under another: one child's first += can
                                         # interleave with the other's second (4, or 3)
    '004-09.py': Varies(strip=('请输入：',),   # the child's prompts land amid the parent's
                        drop=(r'^100$',)),   # lines; it may miss 100 (200 replaces it 50 ms later)
}

# Broken as written in the notes: the error both must end with (exit status 1).
BROKEN = {
    '003-01.py': 'NameError',      # lacks its imports
    '003-12.py': 'SyntaxError',    # its first line is "!/usr/bin/python"
    '003-14.py': 'SyntaxError',    # a stray line of prose
    '004-05.py': 'SyntaxError',    # "from  import Process"
}

# Where cmp deliberately does better than the stdlib (each is in the README's
# differences): cmp's run must be clean -- exit 0, no error on stderr, nothing
# left running -- and print what the stdlib's prints.
FIXED = {
    # 3.11's reader registers the block it attaches to, so at its exit its
    # resource tracker unlinks the sender's block with "leaked shared_memory"
    # warnings, and the sender's own unlink() then fails with FileNotFoundError.
    # cmp tracks blocks by their creator only.
    '000-27.py': 'shared memory is tracked by its creator only',
    '000-28.py': 'shared memory is tracked by its creator only',
}

# Where the default start method is forkserver (3.14 on), the stdlib loses
# children of these examples to a race: the main process ends, and its exit
# unlinks the Lock's (or Queue's) named semaphore before the fork server's
# child has opened it (FileNotFoundError in the child). cmp hands a child its
# objects as it starts, so every child runs: cmp's run must be clean -- no
# error, nothing left running, exit 0 or still running when stopped, as under
# fork -- and print at least every line the stdlib's printed.
FORKSERVER_RACES = {'002-16.py', '003-11.py', '003-17.py'}
FORKSERVER_DEFAULT = _versions.DEFAULT_START_METHOD == 'forkserver'

# Examples that poll in a busy loop: they run after the others, so that they
# take no CPU from the examples that time things.
ALONE = {'004-09.py'}

# Examples started together in one directory: the second a second after the
# first. They name their shared memory segment "shm", so the stdlib's pair
# and cmp's pair run one after the other, holding a lock that keeps other
# test sessions on the machine from running theirs at the same time.
PAIRS = {'000-27.py': '000-28.py'}
PAIR_FILES = ('MyClass.py',)
PAIR_DELAY = 1.0
PAIR_SEGMENT = '/dev/shm/shm'
PAIR_LOCK = os.path.join(tempfile.gettempdir(), 'cmp-notes-shm.lock')


# ---------------------------------------------------------------------------
# Running one example

@dataclasses.dataclass
class Result:
    file: str
    impl: str
    status: object       # exit code (negative: killed by that signal), or STOPPED
    stdout: str
    stderr: str
    leftover: bool       # processes of its group outlived its main process
    pids: tuple          # (harness pid, first pid of the run, last pid after it)


STOPPED = 'stopped after the manifest\'s seconds'


def _command(file, impl):
    cmd = [sys.executable]
    if impl == 'cmp':
        cmd += ['-m', 'cmp']
    return cmd + [file]


def _env():
    env = dict(os.environ)
    env.pop('PYTHONUNBUFFERED', None)
    env['PYTHONIOENCODING'] = 'utf-8'    # what a UTF-8 terminal has
    return env


def _last_pid():
    try:
        with open('/proc/sys/kernel/ns_last_pid') as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _group_members(pgid):
    """The live processes (not zombies waiting to be reaped) of group pgid."""
    members = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name, 'rb') as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
        fields = stat[stat.rindex(b')') + 2:].split()
        if int(fields[2]) == pgid and fields[0] != b'Z':
            members.append(int(name))
    return members


def _group_alive(pgid):
    return bool(_group_members(pgid))


def _is_resource_tracker(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            cmdline = f.read()
        with open('/proc/%d/comm' % pid, 'rb') as f:
            comm = f.read().strip()
    except OSError:
        return False
    return comm == b'cmp-tracker' or b'resource_tracker' in cmdline


def _stop_group(pgid):
    """SIGKILL the group, sparing its resource trackers (the stdlib's and
    cmp's): once everything else is gone they clean up what the program left
    in /dev/shm, which SIGKILL would leave there forever. Trackers still
    running a few seconds later are killed by the caller's final sweep."""
    for pid in _group_members(pgid):
        if not _is_resource_tracker(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_example(file, impl, cwd, seconds, stdin=''):
    """Run one example in cwd until it ends or `seconds` pass; a Result."""
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)   # bytes as written: no \r\n translation
    try:
        proc = subprocess.Popen(
            _command(file, impl), cwd=cwd, env=_env(), stdin=subprocess.PIPE,
            stdout=slave, stderr=subprocess.PIPE, start_new_session=True)
    finally:
        os.close(slave)
    deadline = time.monotonic() + seconds
    pidfd = os.pidfd_open(proc.pid)
    out, err = bytearray(), bytearray()
    streams = {master: out, proc.stderr.fileno(): err}
    try:
        try:
            proc.stdin.write(stdin.encode('utf-8'))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        # Until the main process ends or time is up.
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([*streams, pidfd], [], [], left)
            if pidfd in ready:
                break
            _read_ready(ready, streams)
        if proc.poll() is None:
            _stop_group(proc.pid)
            proc.wait()
            status = STOPPED
            leftover = False
        else:
            status = proc.returncode
            # Anything of its group still running is an orphan it left.
            grace = time.monotonic() + 0.5
            while _group_alive(proc.pid) and time.monotonic() < grace:
                time.sleep(0.02)
            leftover = _group_alive(proc.pid)
            if leftover:
                _stop_group(proc.pid)
        # Nothing of it outlives the run (SIGKILL takes a moment to land,
        # trackers a moment to clean up).
        gone = time.monotonic() + 5.0
        while _group_alive(proc.pid) and time.monotonic() < gone:
            time.sleep(0.02)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # Everything written before the end: read to end of file.
        while streams:
            ready, _, _ = select.select(list(streams), [], [], 5.0)
            if not ready:
                break
            _read_ready(ready, streams)
    finally:
        os.close(pidfd)
        os.close(master)
        proc.stderr.close()
    return Result(file, impl, status, _text(out), _text(err), leftover,
                  (os.getpid(), proc.pid, _last_pid()))


def _read_ready(ready, streams):
    """Read what is ready; a stream at end of file is no longer watched."""
    for fd in ready:
        if fd not in streams:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:          # EIO: every writer of the pty closed it
            chunk = b''
        if chunk:
            streams[fd] += chunk
        else:
            del streams[fd]


def _text(data):
    return bytes(data).decode('utf-8', 'backslashreplace')


def _prepare(files, fixtures):
    d = tempfile.mkdtemp(prefix='cmp-notes-')
    for name in files:
        shutil.copyfile(os.path.join(HERE, name), os.path.join(d, name))
    for name, text in (fixtures or {}).items():
        with open(os.path.join(d, name), 'w', encoding='utf-8') as f:
            f.write(text)
    return d


def run_one(file, impl):
    entry = MANIFEST[file]
    d = _prepare([file], entry.get('fixtures'))
    try:
        return {file: run_example(file, impl, d, entry['seconds'], entry.get('stdin', ''))}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_pair(first, second, impl):
    """Start `first`, then `second` PAIR_DELAY later, in one directory."""
    d = _prepare([first, second, *PAIR_FILES], None)
    results = {}

    def run(file):
        entry = MANIFEST[file]
        results[file] = run_example(file, impl, d, entry['seconds'], entry.get('stdin', ''))

    with open(PAIR_LOCK, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _remove_segment()       # a run killed midway may have left it
        try:
            t = threading.Thread(target=run, args=(first,))
            t.start()
            time.sleep(PAIR_DELAY)
            run(second)
            t.join()
        finally:
            _remove_segment()
            shutil.rmtree(d, ignore_errors=True)
    return results


def _remove_segment():
    try:
        os.unlink(PAIR_SEGMENT)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------
# Comparing

_CTIME = re.compile(r'\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug'
                    r'|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d \d{4}\b')
_ADDR = re.compile(r'0x[0-9a-fA-F]+')
_FLOAT = re.compile(r'(?<![\d.])\d+\.\d+(?:e[-+]?\d+)?(?![\d.])')
_INT = re.compile(r'(?<!\d)\d+(?!\d)')
_ERROR = re.compile(r'^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*'
                    r'(?:Error|Exception|Exit|Interrupt|Warning|Empty|Full))(?=:|$)', re.M)


def is_pid(n, pids):
    """Whether n can be a pid of this run: the harness, or one allotted during it."""
    harness, first, last = pids
    if n == harness:
        return True
    if last is None:
        return n >= first
    if last >= first:
        return first <= n <= last
    return n >= first or 300 <= n <= last     # the pid counter wrapped around


NOTHING_VARIES = Varies()


def normalize_line(line, runs, varies=NOTHING_VARIES):
    """Mask what differs run to run; `runs`: the pids of the runs being compared.

    A number is taken for a pid if it can be one in any of the runs, so that
    a number printed as such (12345) reads the same in all of them.
    """
    line = _CTIME.sub('<time>', line)
    line = _ADDR.sub('0xADDR', line)
    line = _FLOAT.sub('<float>', line)
    if varies.shapes:
        # Every number alike: a count that happens to fall among the run's
        # pids must not read as a different kind of line.
        line = _INT.sub('<n>', line)
    line = _INT.sub(lambda m: '<pid>' if any(is_pid(int(m.group()), pids) for pids in runs)
                    else m.group(), line)
    for pattern in varies.masks:
        line = re.sub(pattern, '<varies>', line)
    return line


def stdout_lines(result, runs, varies=NOTHING_VARIES):
    """The lines the terminal showed, normalized, in order (a last unfinished one too)."""
    text = result.stdout.replace('\r\n', '\n')
    for pattern in varies.strip:
        text = re.sub(pattern, '', text)
    lines = text.split('\n')
    if lines[-1] == '':
        lines.pop()
    lines = [normalize_line(line, runs, varies) for line in lines]
    return [line for line in lines if not any(re.search(p, line) for p in varies.drop)]


def last_error(result, varies=NOTHING_VARIES):
    """The type of the last error named on stderr (cmp's modules read as the stdlib's)."""
    names = [re.sub(r'^cmp\.', 'multiprocessing.', name)
             for name in _ERROR.findall(result.stderr)]
    names = [name for name in names if name not in varies.errors]
    return names[-1] if names else None


def _stdout_differences(a, b, varies):
    """Why normalized lines a (stdlib) and b (cmp) differ, or None."""
    if varies.cut:
        n = min(len(a), len(b))
        if a[:n] == b[:n] and abs(len(a) - len(b)) <= varies.cut:
            return None
        return 'stdout, in order: stdlib %r, cmp %r' % (a, b)
    if varies.shapes:
        a, b = set(a), set(b)
        only_std, only_cmp = sorted(a - b), sorted(b - a)
    else:
        a, b = collections.Counter(a), collections.Counter(b)
        only_std, only_cmp = sorted((a - b).elements()), sorted((b - a).elements())
    if a == b:
        return None
    return 'stdout lines only under the stdlib: %r; only under cmp: %r' % (only_std, only_cmp)


def differences(std, mine, varies=NOTHING_VARIES):
    """How `mine` differs from `std` as a person would see it; [] when alike."""
    diffs = []
    if std.status != mine.status:
        diffs.append('status: stdlib %r, cmp %r' % (std.status, mine.status))
    if std.leftover != mine.leftover:
        diffs.append('processes left running after the main one ended: stdlib %s, cmp %s'
                     % (std.leftover, mine.leftover))
    runs = std.pids, mine.pids
    out = _stdout_differences(stdout_lines(std, runs, varies), stdout_lines(mine, runs, varies),
                              varies)
    if out:
        diffs.append(out)
    errors = last_error(std, varies), last_error(mine, varies)
    if errors[0] != errors[1]:
        diffs.append('last error on stderr: stdlib %r, cmp %r' % errors)
    return diffs


def report(std, mine, diffs):
    parts = ['%s differs under cmp:' % std.file, *('  - ' + d for d in diffs)]
    for r in (std, mine):
        parts.append('--- %s: status %r\n--- stdout\n%s\n--- stderr\n%s'
                     % (r.impl, r.status, r.stdout, r.stderr))
    return '\n'.join(parts)


# ---------------------------------------------------------------------------
# The runs: all at once, before the first example is checked

MAX_WORKERS = 24


def _jobs(files):
    """(seconds, job) for the runs of these examples; a job returns {(file, impl): Result}."""
    for file in files:
        if file in PAIRS:
            first, second = file, PAIRS[file]
            seconds = max(MANIFEST[first]['seconds'], PAIR_DELAY + MANIFEST[second]['seconds'])

            def job(first=first, second=second):   # both pairs, one after the other
                return {(f, impl): r for impl in IMPLS
                        for f, r in run_pair(first, second, impl).items()}
            yield 2 * seconds, job
        elif file not in PAIRS.values():
            for impl in IMPLS:
                def job(file=file, impl=impl):
                    return {(f, impl): r for f, r in run_one(file, impl).items()}
                yield MANIFEST[file]['seconds'], job


def run_all(files):
    """{(file, impl): Result} for these examples, run concurrently."""
    results = {}
    for phase in (sorted(set(files) - ALONE), sorted(set(files) & ALONE)):
        # Longest first; the sort is stable, so an example's two runs stay side by side.
        jobs = sorted(_jobs(phase), key=lambda job: -job[0])
        with concurrent.futures.ThreadPoolExecutor(MAX_WORKERS) as pool:
            for future in [pool.submit(job) for _, job in jobs]:
                results.update(future.result())
    return results


def _example_of(item):
    callspec = getattr(item, 'callspec', None)
    return callspec.params.get('example') if callspec else None


@pytest.fixture(scope='module')
def results(request):
    """Every selected example's two runs, done concurrently once."""
    wanted = {_example_of(item) for item in request.session.items
              if item.module is request.module} - {None}
    for first, second in PAIRS.items():   # a pair runs together or not at all
        if first in wanted or second in wanted:
            wanted |= {first, second}
    return run_all(sorted(wanted))


def _params():
    for file in sorted(MANIFEST):
        marks = []
        if file in NEEDS:
            reason = 'needs ' + '; '.join(ISSUES[n] for n in sorted(NEEDS[file], key=str))
            marks.append(pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError))
        yield pytest.param(file, marks=marks, id=file[:-3])


@pytest.mark.timeout(300)
@pytest.mark.parametrize('example', list(_params()))
def test_example(example, results):
    std, mine = results[example, 'stdlib'], results[example, 'cmp']
    varies = VARIES.get(example, NOTHING_VARIES)
    if example in BROKEN:
        assert (std.status, last_error(std)) == (1, BROKEN[example]), report(std, mine, [])
    if example in FIXED:
        runs = std.pids, mine.pids
        diffs = [d for d in [_stdout_differences(stdout_lines(std, runs, varies),
                                                 stdout_lines(mine, runs, varies), varies)]
                 if d]
        if (mine.status, last_error(mine), mine.leftover, mine.stderr) != (0, None, False, ''):
            diffs.append('cmp should run cleanly (%s)' % FIXED[example])
    elif FORKSERVER_DEFAULT and example in FORKSERVER_RACES:
        diffs = _race_differences(std, mine, varies)
    else:
        diffs = differences(std, mine, varies)
    assert not diffs, report(std, mine, diffs)


def _race_differences(std, mine, varies):
    """FORKSERVER_RACES: what cmp's run lacks, given that the stdlib's lost children."""
    runs = std.pids, mine.pids
    missing = (collections.Counter(stdout_lines(std, runs, varies))
               - collections.Counter(stdout_lines(mine, runs, varies)))
    diffs = []
    if missing:
        diffs.append('stdout lines only under the stdlib: %r' % sorted(missing.elements()))
    if mine.status not in (0, STOPPED) or last_error(mine) or mine.leftover:
        diffs.append('cmp should run cleanly: every child gets its lock or queue')
    return diffs


# ---------------------------------------------------------------------------
# The harness itself: it must tell different things apart.

def _result(stdout, status=0, stderr='', leftover=False, impl='stdlib',
            pids=(100000, 20000, 20100)):
    return Result('x.py', impl, status, stdout, stderr, leftover, pids)


def test_manifest_and_tables_agree():
    files = {f for f in os.listdir(HERE) if re.fullmatch(r'\d{3}-\d\d\.py', f)}
    assert files == set(MANIFEST)
    assert set(NEEDS) <= files and set(VARIES) <= files and set(BROKEN) <= files
    assert not set(NEEDS) & set(BROKEN)
    assert set(FIXED) <= files and not set(FIXED) & set(BROKEN)
    assert FORKSERVER_RACES <= files and not FORKSERVER_RACES & (set(BROKEN) | set(FIXED))
    assert all(n in ISSUES for needs in NEEDS.values() for n in needs)


def test_normalize_masks_what_varies():
    pids = [(100000, 20000, 20100)]
    line = ("20042 <Process name='P-1' pid=20050 parent=100000 started> 0x7f3a2b "
            "at Mon Jan  5 10:11:12 2026 took 1.25 s, 7 items, 19999 not a pid")
    assert normalize_line(line, pids) == (
        "<pid> <Process name='P-1' pid=<pid> parent=<pid> started> 0xADDR "
        "at <time> took <float> s, 7 items, 19999 not a pid")
    assert normalize_line('子进程的pid=20001', pids) == '子进程的pid=<pid>'
    assert normalize_line('12345 30001', [(1, 12000, 12400), (2, 30000, 30002)]) == '<pid> <pid>'
    # A run during which the pid counter wrapped around.
    assert is_pid(32000, (1, 31000, 400)) and is_pid(350, (1, 31000, 400))
    assert not is_pid(5000, (1, 31000, 400)) and not is_pid(200, (1, 31000, 400))


def test_differences_tell_outputs_apart():
    std = _result('a 20001\nb\nb\n')
    assert differences(std, _result('b\na 20077\nb\n', impl='cmp')) == []
    assert differences(std, _result('a 20001\nb\n', impl='cmp'))            # a line missing
    assert differences(std, _result('a 20001\nb\nc\n', impl='cmp'))         # a line differs
    assert differences(std, _result('a 19999\nb\nb\n', impl='cmp'))         # not a pid
    # A number printed as such, which a pid of one run happens to equal.
    assert differences(_result('12345\n', pids=(1, 12300, 12400)),
                       _result('12345\n', impl='cmp', pids=(1, 14000, 14100))) == []
    assert differences(std, _result('a 20001\nb\nb\n', status=1, impl='cmp'))
    assert differences(std, _result('a 20001\nb\nb\n', status=STOPPED, impl='cmp'))
    assert differences(std, _result('a 20001\nb\nb\n', leftover=True, impl='cmp'))
    assert differences(_result('', 1, 'Traceback:\nNameError: x\n'),
                       _result('', 1, 'Traceback:\nTypeError: x\n', impl='cmp'))
    assert differences(_result('', 1, 'x.TimeoutError\n'),
                       _result('', 1, 'cmp.x.TimeoutError\n', impl='cmp')) == [
        "last error on stderr: stdlib 'x.TimeoutError', cmp 'multiprocessing.x.TimeoutError'"]
    assert differences(_result('', 1, 'multiprocessing.x.TimeoutError: t\n'),
                       _result('', 1, 'cmp.x.TimeoutError: t\n', impl='cmp')) == []
    # Shapes: which kinds of line, not how many.
    shapes = Varies(shapes=True)
    assert differences(_result('1\n2\n3\n'), _result('1\n2\n', impl='cmp'), shapes) == []
    # A count that falls in the range of the run's pids is still a count.
    assert normalize_line('20042', [(1, 20000, 20100)], shapes) == '<n>'
    assert differences(_result('1\n2\n'), _result('1\nx\n', impl='cmp'), shapes)
    assert differences(_result('1\n'), _result('', impl='cmp'), shapes)
    # Stopped midway: in order, and one side may lack its last line.
    cut = Varies(cut=1)
    assert differences(_result('1\n2\n3\n'), _result('1\n2\n', impl='cmp'), cut) == []
    assert differences(_result('1\n2\n3\n'), _result('1\n', impl='cmp'), cut)
    assert differences(_result('1\n2\n'), _result('2\n1\n', impl='cmp'), cut)
    # Masks and lines that may not appear.
    flaky = Varies(masks=(r'^(True|False)$',), drop=(r'^child$',))
    assert differences(_result('True\nchild\nTrue\n'), _result('True\nFalse\n', impl='cmp'),
                       flaky) == []
    assert differences(_result('True\nchild\n'), _result('True\nchild\nTrue\n', impl='cmp'),
                       flaky)
    maybe = Varies(errors=('x.E1Error',))
    assert differences(_result('', 0, ''), _result('', 0, 'x.E1Error: y\n', impl='cmp'),
                       maybe) == []
    assert differences(_result('', 0, ''), _result('', 0, 'x.E2Error: y\n', impl='cmp'), maybe)
    prompts = Varies(strip=('> ',))
    assert differences(_result('> > 1\n2\n> '), _result('> 1\n> 2\n', impl='cmp'), prompts) == []
    assert differences(_result('> > 1\n2\n> '), _result('> 1\n> 3\n', impl='cmp'), prompts)


def test_runner_shows_what_a_terminal_shows(tmp_path, monkeypatch):
    monkeypatch.setenv('PYTHONUNBUFFERED', '1')
    (tmp_path / 'ends.py').write_text(
        'import os, subprocess, sys\n'
        'out = sys.stdout\n'
        'print(out.isatty(), out.line_buffering, os.environ.get("PYTHONUNBUFFERED"))\n'
        'print(input() + "!")\n'
        'sys.stderr.write("Traceback ...\\nValueError: v\\n")\n'
        'subprocess.Popen(["sleep", "30"])\n'      # outlives it
        'os._exit(3)\n')                           # line-buffered: printed lines are out
    r = run_example('ends.py', 'stdlib', str(tmp_path), 20, 'hi\n')
    assert (r.status, r.stdout, last_error(r), r.leftover) == (
        3, 'True True None\nhi!\n', 'ValueError', True)
    assert not _group_alive(r.pids[1])          # the orphan was killed
    (tmp_path / 'stays.py').write_text('import time\nprint("a")\ntime.sleep(30)\n')
    start = time.monotonic()
    r = run_example('stays.py', 'stdlib', str(tmp_path), 1)
    assert (r.status, r.stdout, r.leftover) == (STOPPED, 'a\n', False)
    assert time.monotonic() - start < 10
    assert not _group_alive(r.pids[1])
