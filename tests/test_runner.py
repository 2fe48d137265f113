"""python -m cmp SCRIPT / -m MODULE: the program runs unchanged on cmp."""
import os
import subprocess
import sys
import textwrap

import pytest

from support import child_env

METHODS = ['fork', 'spawn', 'forkserver']


def run_cmp(tmp_path, source, *args, module=None, timeout=60):
    script = tmp_path / 'prog.py'
    script.write_text(textwrap.dedent(source))
    target = ['-m', module] if module else [str(script)]
    return subprocess.run([sys.executable, '-m', 'cmp', *target, *args], cwd=tmp_path,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


def run_python(tmp_path, *args, timeout=60):
    return subprocess.run([sys.executable, str(tmp_path / 'prog.py'), *args], cwd=tmp_path,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('method', METHODS)
def test_multiprocessing_is_cmp_everywhere(tmp_path, method):
    r = run_cmp(tmp_path, '''
        import sys
        import multiprocessing
        import multiprocessing.process as mpp
        from multiprocessing import Process, current_process
        def child():
            import multiprocessing, multiprocessing.context
            print('child', multiprocessing.__name__, multiprocessing.context.__name__,
                  __name__, current_process().name)
        if __name__ == '__main__':
            multiprocessing.set_start_method(sys.argv[1])
            print('main', multiprocessing.__name__, mpp.__name__, sys.argv[1:], __file__ == sys.argv[0])
            p = Process(target=child)
            p.start(); p.join()
            print('exit', p.exitcode)
    ''', method)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "main cmp cmp.process ['%s'] True" % method
    child_main = '__main__' if method == 'fork' else '__mp_main__'
    assert lines[1] == 'child cmp cmp.context %s Process-1' % child_main
    assert lines[2] == 'exit 0'


def test_missing_submodule_is_a_clear_import_error(tmp_path):
    r = run_cmp(tmp_path, '''
        import multiprocessing.no_such_module
    ''')
    assert r.returncode == 1
    assert ('ImportError: cmp does not provide multiprocessing.no_such_module yet'
            in r.stderr), r.stderr


def test_the_windows_module_fails_as_the_stdlibs(tmp_path):
    r = run_cmp(tmp_path, '''
        import multiprocessing.popen_spawn_win32
    ''')
    std = run_python(tmp_path)          # the same program on the stdlib
    assert r.returncode == std.returncode == 1
    last = lambda err: err.strip().splitlines()[-1]
    assert last(r.stderr) == last(std.stderr), (std.stderr, r.stderr)
    assert last(r.stderr).startswith('ModuleNotFoundError:') and 'msvcrt' in last(r.stderr)


@pytest.mark.parametrize('source, error', [
    ('x = 1\nraise ValueError("bad")\n', 'ValueError: bad'),
    ('def f(:\n    pass\n', 'SyntaxError: invalid syntax'),
    ('import sys\nsys.exit(4)\n', None),
    ('import sys\nprint("out")\nsys.exit("message")\n', 'message'),
])
def test_exit_status_and_traceback_match_python(tmp_path, source, error):
    mine = run_cmp(tmp_path, source)
    std = run_python(tmp_path)
    assert mine.returncode == std.returncode
    assert mine.stdout == std.stdout
    # The same report, without the runner's own frames.
    assert mine.stderr == std.stderr
    if error:
        assert mine.stderr.splitlines()[-1] == error


def test_run_module(tmp_path):
    pkg = tmp_path / 'mypkg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'job.py').write_text(textwrap.dedent('''
        import sys, multiprocessing as mp
        def work(x):
            print('work', x, mp.__name__)
        if __name__ == '__main__':
            mp.set_start_method('spawn')
            p = mp.Process(target=work, args=(sys.argv[1],))
            p.start(); p.join()
            print('done', p.exitcode)
    '''))
    r = run_cmp(tmp_path, '', 'arg', module='mypkg.job')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['work arg cmp', 'done 0']


def test_missing_script(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'cmp', 'nope.py'], cwd=tmp_path,
                       env=child_env(), capture_output=True, text=True, timeout=60)
    std = subprocess.run([sys.executable, 'nope.py'], cwd=tmp_path,
                         env=child_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == std.returncode == 2
    assert "can't open file" in r.stderr


def test_usage(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'cmp'], cwd=tmp_path, env=child_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert 'python -m cmp SCRIPT' in r.stderr


def test_cmp_never_imports_stdlib_multiprocessing(tmp_path):
    (tmp_path / 'prog.py').write_text(textwrap.dedent('''
        import sys
        import cmp
        import cmp.spawn, cmp.forkserver, cmp.popen_spawn_posix, cmp.popen_forkserver
        import cmp.util, cmp.reduction
        def f():
            print(sorted(m for m in sys.modules if m.startswith('multiprocessing')))
        if __name__ == '__main__':
            f()
            for method in ('fork', 'spawn', 'forkserver'):
                p = cmp.get_context(method).Process(target=f)
                p.start(); p.join()
    '''))
    r = run_python(tmp_path)
    assert r.stdout.splitlines() == ['[]'] * 4, r.stderr


def test_relative_script_path_as_python(tmp_path):
    (tmp_path / 'prog.py').write_text(textwrap.dedent('''
        import sys
        print(__file__, sys.argv[0])
        raise ValueError('where')
    '''))
    mine = subprocess.run([sys.executable, '-m', 'cmp', 'prog.py'], cwd=tmp_path,
                          env=child_env(), capture_output=True, text=True, timeout=60)
    std = subprocess.run([sys.executable, 'prog.py'], cwd=tmp_path,
                         env=child_env(), capture_output=True, text=True, timeout=60)
    assert mine.stdout == std.stdout == '%s prog.py\n' % (tmp_path / 'prog.py')
    assert mine.stderr == std.stderr
