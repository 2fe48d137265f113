"""Make `import multiprocessing` (and every multiprocessing.X) resolve to cmp.

Installed by the runner (`python -m cmp`) and, through the preparation data,
in every child it starts; propagate() extends it to any Python the program
starts in other ways (see _boot/sitecustomize.py). A submodule cmp does not have is an ImportError
that names it; nothing ever falls back to the stdlib's implementation.
"""
import importlib
import os
import sys
from importlib.machinery import ModuleSpec

__all__ = []     # a private module; `from multiprocessing.X import *` imports nothing

_PREFIX = 'multiprocessing'


class _AliasLoader:
    # The loader protocol, duck-typed: importlib.abc costs a spawned child ~15 ms.
    def __init__(self, module):
        self._module = module

    def create_module(self, spec):
        return self._module

    def exec_module(self, module):
        # The import system stamped the alias's spec on the module; give the
        # module back its own so it keeps its identity (pickling, spawn).
        module.__spec__ = self._module_spec


class _AliasFinder:
    def find_spec(self, fullname, path=None, target=None):
        if fullname != _PREFIX and not fullname.startswith(_PREFIX + '.'):
            return None
        real = 'cmp' + fullname[len(_PREFIX):]
        try:
            module = importlib.import_module(real)
        except ModuleNotFoundError as e:
            if e.name != real:
                raise
            raise ImportError('cmp does not provide %s yet (running under '
                              'python -m cmp)' % fullname, name=fullname) from None
        loader = _AliasLoader(module)
        loader._module_spec = module.__spec__
        return ModuleSpec(fullname, loader)


_finder = _AliasFinder()


def installed():
    return _finder in sys.meta_path


def install():
    """Alias multiprocessing to cmp in this interpreter (idempotent)."""
    if installed():
        return
    # Drop a stdlib multiprocessing imported before us (e.g. by site hooks).
    for name in [n for n in sys.modules if n == _PREFIX or n.startswith(_PREFIX + '.')]:
        del sys.modules[name]
    sys.meta_path.insert(0, _finder)
    import cmp
    sys.modules[_PREFIX] = cmp


def propagate():
    """Make every Python this process starts from now on (and their own
    children) alias multiprocessing too: loky starts its workers as
    `python -m ...`, which neither fork nor cmp's spawn handles."""
    boot = os.path.join(os.path.dirname(os.path.abspath(__file__)), '_boot')
    path = os.environ.get('PYTHONPATH')
    if path is not None and boot in path.split(os.pathsep):
        return
    os.environ['PYTHONPATH'] = boot + (os.pathsep + path if path else '')
