"""Run one class of CPython's multiprocessing tests; the harness (run.py) starts it.

    python [-m cmp] worker.py METHOD --list
        print one line of JSON: {class name: [test ids]} for METHOD's module
    python [-m cmp] worker.py METHOD CLASS OUT
        run CLASS of METHOD's module, appending one JSON line per finished test to OUT:
        {"id": ..., "status": pass|fail|error|skip|xfail|xpass, "detail": ..., "seconds": ...}.
        A failure of setUpModule/setUpClass is a line with "fixture": true.

Under `python -m cmp` every test also checks that nothing of the stdlib's
multiprocessing package was imported: a module loaded from its directory turns
the test into an error (status "stdlib").
"""
import importlib
import json
import os
import signal
import sys
import sysconfig
import time
import unittest

STDLIB_MP = os.path.join(sysconfig.get_paths()['stdlib'], 'multiprocessing') + os.sep


def stdlib_modules():
    """Names in sys.modules whose file lies in the stdlib's multiprocessing package."""
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, '__file__', None) or ''
        if os.path.abspath(path).startswith(STDLIB_MP):
            found.append(name)
    return sorted(found)


def class_tests(cls):
    return [t.id() for t in unittest.defaultTestLoader.loadTestsFromTestCase(cls)]


def list_classes(module):
    classes = {}
    for name, obj in vars(module).items():
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase) \
                and obj.__module__ == module.__name__:
            classes[name] = class_tests(obj)
    return {name: ids for name, ids in classes.items() if ids}


class Recorder(unittest.TextTestResult):
    """A verbose text result that also writes each test's outcome to a file."""

    def __init__(self, *args, out, on_cmp, **kwargs):
        super().__init__(*args, **kwargs)
        self._out = out
        self._on_cmp = on_cmp
        self._status = {}
        self._started = {}

    def _emit(self, **record):
        self._out.write(json.dumps(record) + '\n')
        self._out.flush()

    def _set(self, test, status, err=None):
        tid = test.id()
        # A failed subtest keeps the test failed even if the rest passes.
        if self._status.get(tid, (None,))[0] in ('fail', 'error') and status == 'pass':
            return
        detail = self._exc_info_to_string(err, test)[-2000:] if err else None
        self._status[tid] = (status, detail)

    def _fixture(self, test, status, err):
        # setUpModule/setUpClass/tearDown*: an _ErrorHolder, not a test.
        detail = err if isinstance(err, str) else self._exc_info_to_string(err, test)[-2000:]
        self._emit(id=test.description, status=status, detail=detail, fixture=True)

    def startTest(self, test):
        self._started[test.id()] = time.monotonic()
        super().startTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, 'pass')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, 'fail', err)

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._set(test, 'error', err)
        else:
            self._fixture(test, 'error', err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        if isinstance(test, unittest.TestCase):
            self._status[test.id()] = ('skip', reason)
        else:
            self._fixture(test, 'skip', reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, 'xfail')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, 'xpass')

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._set(test, 'fail' if failed else 'error', err)

    def stopTest(self, test):
        super().stopTest(test)
        status, detail = self._status.pop(test.id(), ('error', 'no outcome recorded'))
        if self._on_cmp:
            leaked = stdlib_modules()
            if leaked:
                status, detail = 'stdlib', 'stdlib multiprocessing imported: %s' % leaked
        seconds = time.monotonic() - self._started.pop(test.id(), time.monotonic())
        self._emit(id=test.id(), status=status, detail=detail, seconds=round(seconds, 3))


def main(argv):
    method = argv[1]
    import multiprocessing
    on_cmp = multiprocessing.__name__ == 'cmp'      # python -m cmp aliases it
    if on_cmp != (os.environ.get('CMP_SUITE_SIDE') == 'cmp'):
        sys.exit('worker: multiprocessing is %s, not what the harness asked for'
                 % multiprocessing.__name__)
    if argv[2] == '--list':
        print(json.dumps(list_classes(importlib.import_module('mp_' + method))))
        return 0
    cls_name, out_path = argv[2], argv[3]
    # Started from the background of a shell (`run.py &`), this interpreter
    # inherits SIGINT ignored, and the tests that interrupt a process
    # (test_wait_result, test_interrupt, ..._ignores_sigint) wait for a
    # KeyboardInterrupt that never comes, on the stdlib as on cmp. Handle it
    # as an interpreter started from a terminal does; the children get it
    # (or, when they exec, SIG_DFL) from here.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(out_path, 'a') as out:
        try:
            module = importlib.import_module('mp_' + method)
        except BaseException:
            import traceback
            out.write(json.dumps({'id': 'import', 'status': 'error', 'fixture': True,
                                  'detail': traceback.format_exc()[-2000:]}) + '\n')
            raise
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(getattr(module, cls_name))
        if on_cmp and stdlib_modules():
            out.write(json.dumps({'id': 'import', 'status': 'stdlib', 'fixture': True,
                                  'detail': 'stdlib multiprocessing imported: %s'
                                  % stdlib_modules()}) + '\n')
            return 1

        def result(*args, **kwargs):
            return Recorder(*args, out=out, on_cmp=on_cmp, **kwargs)
        runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=result)
        runner.run(suite)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
