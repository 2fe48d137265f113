"""cmp: CPython's multiprocessing, rebuilt on a C core for Linux.

Use it as `import cmp as multiprocessing`, or run an unchanged program with
`python -m cmp script.py`.
"""
import sys

if not sys.platform.startswith('linux'):
    raise ImportError('cmp runs on Linux only (this is %s); use the standard '
                      'library multiprocessing here' % sys.platform)

from . import context

__version__ = '0.1.0'

# The public names are the default context's bound methods and classes, as
# in the stdlib, so `from cmp import Process, Queue, Lock` works.
__all__ = [name for name in dir(context._default_context) if not name.startswith('_')]
globals().update((name, getattr(context._default_context, name)) for name in __all__)

SUBDEBUG = 5          # defined, as in the stdlib, but not in __all__
SUBWARNING = 25

from . import process, reduction, util  # noqa: E402  (submodules the stdlib exposes too)

# A child started by spawn or forkserver runs the main script as __mp_main__:
# what it pickles by reference to that module must load here too.
if '__main__' in sys.modules:
    sys.modules['__mp_main__'] = sys.modules['__main__']
