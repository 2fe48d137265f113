"""Windows' Popen (mirrors multiprocessing.popen_spawn_win32).

It is here so that cmp's package holds every module of the stdlib's (code
that lists them, as CPython's _TestImportStar does, finds the same names),
and, like the stdlib's on Linux, it cannot be imported: the stdlib's needs
msvcrt and _winapi, so importing it raises ModuleNotFoundError "No module
named 'msvcrt'"; so does this one.
"""
import msvcrt  # noqa: F401  (Windows only: the stdlib's ImportError on Linux)

__all__ = ['Popen']  # noqa: F822  (never reached: the import above fails)
