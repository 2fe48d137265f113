"""The built wheel holds the whole package: every subpackage and module of the
source tree's cmp/, its type stubs (*.pyi, py.typed), and the extension cmp._core.

The wheel is built from a copy of the sources in a temporary directory (so
the checkout gets no build/ or egg-info), without build isolation: setuptools
and wheel come from the running interpreter, no index is needed.
"""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ('pyproject.toml', 'setup.py', 'README.md', 'cmp', 'src')


def packaged(name):
    return name.endswith(('.py', '.pyi')) or name.endswith('/py.typed')


def source_modules():
    """Paths (relative to the root) of every module and stub file in the cmp
    package tree, which must all be in the wheel."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, 'cmp')):
        dirnames[:] = [d for d in dirnames if d != '__pycache__']
        rel = os.path.relpath(dirpath, ROOT)
        found.update(os.path.join(rel, f).replace(os.sep, '/')
                     for f in filenames if packaged('/' + f))
    return found


def build_wheel(tmp_path):
    tree = tmp_path / 'tree'
    tree.mkdir()
    for name in SOURCES:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, tree / name,
                            ignore=shutil.ignore_patterns('__pycache__', '*.so', '*.o'))
        else:
            shutil.copy(src, tree / name)
    out = tmp_path / 'wheels'
    cmd = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
           '--no-index', '-q', '-w', str(out), str(tree)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    if proc.returncode != 0 and 'No module named pip' in proc.stderr:
        pytest.skip('pip is not installed for this interpreter')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob('cmp-*.whl'))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_every_package_and_module(tmp_path):
    pytest.importorskip('setuptools')
    pytest.importorskip('wheel')
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    modules = source_modules()
    assert 'cmp/dummy/__init__.py' in modules       # the subpackage that was once missing
    assert {'cmp/py.typed', 'cmp/__init__.pyi'} <= modules
    missing = sorted(modules - names)
    assert not missing, 'not in the wheel: %s' % missing
    extra = sorted(n for n in names if n.startswith('cmp/') and packaged(n) and n not in modules)
    assert not extra, 'in the wheel but not in the sources: %s' % extra
    assert [n for n in names if n.startswith('cmp/_core') and n.endswith('.so')], \
        'the extension cmp._core is not in the wheel'
