"""Run at startup by every Python that a program under `python -m cmp` starts.

The runner puts this directory first on PYTHONPATH, so a child interpreter
that cmp does not start itself -- loky's workers and resource tracker
(`python -m joblib.externals.loky...`), a `subprocess` of sys.executable --
also resolves `import multiprocessing` to cmp, as cmp's own spawn and
forkserver children do. Nothing is imported until the program imports
multiprocessing; an interpreter without cmp (another version) keeps its
stdlib. Then the sitecustomize this one shadows, if any, runs.
"""
import os
import sys


class _AliasOnFirstImport:
    """A meta path finder that installs cmp's alias when multiprocessing is
    first imported, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != 'multiprocessing' and not fullname.startswith('multiprocessing.'):
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            from cmp import _alias
        except ImportError:
            return None
        _alias.install()
        return _alias._finder.find_spec(fullname, path, target)


def _run_shadowed_sitecustomize():
    import importlib.util
    from importlib.machinery import PathFinder
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = PathFinder.find_spec('sitecustomize', rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules['sitecustomize'] = module
    spec.loader.exec_module(module)


if 'multiprocessing' not in sys.modules:
    sys.meta_path.insert(0, _AliasOnFirstImport())
_run_shadowed_sitecustomize()
