"""Every C method of cmp._core has a docstring and a text signature, so
inspect.signature() and help() work on cmp's objects as on the stdlib's."""
import inspect

import pytest

import cmp
import cmp._core as core

def c_methods():
    for name in sorted(dir(core)):
        obj = getattr(core, name)
        if isinstance(obj, type):
            for attr, value in sorted(vars(obj).items()):
                if type(value).__name__ in ('method_descriptor', 'classmethod_descriptor'):
                    yield '%s.%s' % (name, attr), getattr(obj, attr)
        elif type(obj).__name__ == 'builtin_function_or_method':
            yield name, obj


@pytest.mark.parametrize('name,fn', list(c_methods()), ids=lambda v: v if isinstance(v, str) else '')
def test_c_method_has_a_docstring_and_a_signature(name, fn):
    assert fn.__doc__ and fn.__doc__.strip(), name
    inspect.signature(fn)


def test_public_signatures_match_the_stdlib():
    q = cmp.Queue()
    assert str(inspect.signature(q.put)) == '(obj, block=True, timeout=None)'
    assert str(inspect.signature(q.get)) == '(block=True, timeout=None)'
    a, b = cmp.Pipe()
    assert str(inspect.signature(a.send_bytes)) == '(buf, offset=0, size=None)'
    assert str(inspect.signature(a.poll)) == '(timeout=0.0)'
    assert str(inspect.signature(cmp.Lock().acquire)) == '(block=True, timeout=None)'
    a.close()
    b.close()
