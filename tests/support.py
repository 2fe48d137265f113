"""Differential testing: run one snippet on the stdlib and on cmp, compare.

A snippet is Python source that refers to the module under test as `mp`
(`import multiprocessing as mp` or `import cmp as mp` is prepended). It runs
in a fresh interpreter from a real file (spawn and forkserver re-import the
main module), under a timeout, so a hang fails one test, not the suite.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass

IMPLS = ('multiprocessing', 'cmp')


@dataclass
class Result:
    impl: str
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    def last_error(self):
        """The type of the last exception named on stderr, or None."""
        names = re.findall(r'^(\w+(?:\.\w+)*(?:Error|Exception|Exit|Interrupt|Warning))\b',
                           self.stderr, re.M)
        return names[-1] if names else None


def child_env(extra=None):
    env = dict(os.environ)
    env.pop('PYTHONUNBUFFERED', None)
    if extra:
        env.update(extra)
    return env


def run(code, impl='cmp', *, timeout=60, start_method=None, args=(), stdin=None,
        env=None, runner=False):
    """Run snippet `code` with `mp` bound to `impl`; returns a Result.

    start_method: set with mp.set_start_method() before the snippet runs.
    runner: run through `python -m cmp` with `import multiprocessing as mp`.
    """
    header = 'import %s as mp\n' % ('multiprocessing' if runner else impl)
    if start_method:
        # Guarded, as in a real program: spawned children re-import this file.
        header += 'if __name__ == "__main__":\n    mp.set_start_method(%r)\n' % start_method
    src = header + textwrap.dedent(code)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'snippet.py')
        with open(path, 'w') as f:
            f.write(src)
        cmd = [sys.executable]
        if runner and impl == 'cmp':
            cmd += ['-m', 'cmp']
        cmd += [path, *args]
        proc = subprocess.Popen(cmd, cwd=d, env=child_env(env), text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            try:
                out, err = proc.communicate(stdin, timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
        finally:
            # Whatever ended the wait (a timeout here, pytest-timeout, Ctrl-C),
            # nothing the snippet started outlives it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return Result(impl, proc.returncode, out, err, timed_out=timed_out)


def run_both(code, **kwargs):
    """(stdlib Result, cmp Result) for the same snippet."""
    return tuple(run(code, impl, **kwargs) for impl in IMPLS)


def normalize(text):
    """Mask what differs run to run: pids, addresses, times."""
    text = re.sub(r'0x[0-9a-fA-F]+', '0xADDR', text)
    text = re.sub(r'\b(pid|parent)=\d+', r'\1=N', text)
    return text


def assert_same(code, *, normalize_output=normalize, **kwargs):
    """Run on both; assert identical exit status, stdout and last error type."""
    std, mine = run_both(code, **kwargs)
    assert not std.timed_out, 'stdlib timed out:\n' + std.stderr
    assert not mine.timed_out, 'cmp timed out (stdlib did not):\n' + mine.stderr
    assert normalize_output(mine.stdout) == normalize_output(std.stdout), (
        '\n--- stdlib stdout\n%s--- cmp stdout\n%s--- cmp stderr\n%s'
        % (std.stdout, mine.stdout, mine.stderr))
    assert mine.returncode == std.returncode, (std.stderr, mine.stderr)
    assert mine.last_error() == std.last_error(), (std.stderr, mine.stderr)
    return std, mine
