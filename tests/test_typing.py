"""The type stubs (cmp/*.pyi, py.typed): mypy accepts typed code that uses
cmp's public API, rejects code that misuses it, and every public name of the
package has its stub."""
import ast
import os
import subprocess
import sys

import pytest

import cmp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, 'tests', 'typing')


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def mypy(*paths):
    pytest.importorskip('mypy')
    # The language level the stubs are checked at: the oldest CPython cmp is
    # tested on (a newer interpreter may be newer than mypy knows).
    cmd = [sys.executable, '-m', 'mypy', '--no-incremental', '--follow-imports=silent',
           '--python-version', '3.11', *paths]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_stubs_and_typed_usage_pass_mypy():
    stubs = sorted(os.path.join('cmp', f) for f in os.listdir(os.path.join(ROOT, 'cmp'))
                   if f.endswith('.pyi'))
    r = mypy(os.path.join(HERE, 'usage_ok.py'), *stubs)
    assert r.returncode == 0, r.stdout + r.stderr


def test_misuse_is_reported():
    r = mypy(os.path.join(HERE, 'usage_bad.py'))
    src = read('tests', 'typing', 'usage_bad.py').splitlines()
    want = {i + 1 for i, line in enumerate(src)
            if line and not line.startswith(('#', 'import', 'from', 'q: '))}
    got = {int(line.split(':')[1]) for line in r.stdout.splitlines() if ': error:' in line}
    assert got == want, r.stdout


def test_every_public_name_has_a_stub():
    assert os.path.exists(os.path.join(ROOT, 'cmp', 'py.typed'))
    tree = ast.parse(read('cmp', '__init__.pyi'))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname for a in node.names if a.asname == a.name)
    missing = sorted(set(cmp.__all__) - names)
    assert not missing, missing
