"""Lint as a test: ruff on the Python (pyproject's [tool.ruff]), clang-format
on the C (.clang-format). Each skips when its tool is absent; .ci/run
installs both."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff():
    pytest.importorskip('ruff')
    r = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--output-format', 'concise', '.'],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_clang_format():
    tool = shutil.which('clang-format')
    if tool is None:
        pytest.skip('clang-format is not installed (apt-get install clang-format)')
    files = [os.path.relpath(f, ROOT) for pattern in ('src/*/*.[ch]', 'tests/c/*.[ch]')
             for f in glob.glob(os.path.join(ROOT, pattern))]
    files = sorted(files)
    r = subprocess.run([tool, '--dry-run', '--Werror', *files], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
