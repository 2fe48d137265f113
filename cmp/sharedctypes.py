"""Values and arrays in shared memory (mirrors multiprocessing.sharedctypes).

Objects of a simple type -- a type code of the array module, or c_int,
c_double, c_char, c_bool, ... -- live in the shared-memory arena and are read
and written by C (src/module/sharedctypes.c): `.value`, indexing and slicing
convert straight between the memory and Python objects, with ctypes' rules
and messages, and `get_obj()` gives a ctypes object over the same memory.
Other ctypes types (Structures, arrays of them, c_longdouble, ...) are ctypes
objects over arena memory, as in the stdlib.

The synchronized wrappers take their lock around every access; with a cmp
lock that is two C calls, with no Python code in between.

Objects are shared by inheritance: a forked child inherits the memory; a
child started by spawn or forkserver gets the segment's descriptor while it
is being started. The memory is reclaimed when the object is dropped in the
process that created it (children keep their mapping until they exit).
"""
import ctypes
import weakref

from . import _core, _versions, context, heap, reduction  # noqa: F401  (heap: a name of the stdlib's module)
from .context import assert_spawning  # noqa: F401

__all__ = ['RawValue', 'RawArray', 'Value', 'Array', 'copy', 'synchronized']

typecode_to_type = {
    'c': ctypes.c_char, 'u': ctypes.c_wchar,
    'b': ctypes.c_byte, 'B': ctypes.c_ubyte,
    'h': ctypes.c_short, 'H': ctypes.c_ushort,
    'i': ctypes.c_int, 'I': ctypes.c_uint,
    'l': ctypes.c_long, 'L': ctypes.c_ulong,
    'q': ctypes.c_longlong, 'Q': ctypes.c_ulonglong,
    'f': ctypes.c_float, 'd': ctypes.c_double,
}

# The ctypes types kept in C, and their item codes. Exactly these classes:
# subclasses and the byte-swapped variants are left to ctypes.
_simple_codes = {t: t._type_ for t in (
    ctypes.c_char, ctypes.c_wchar, ctypes.c_bool,
    ctypes.c_byte, ctypes.c_ubyte, ctypes.c_short, ctypes.c_ushort,
    ctypes.c_int, ctypes.c_uint, ctypes.c_long, ctypes.c_ulong,
    ctypes.c_longlong, ctypes.c_ulonglong, ctypes.c_float, ctypes.c_double)}


def _not_inherited(name):
    raise RuntimeError('%s objects should only be shared between processes'
                       ' through inheritance' % name)


# ---------------------------------------------------------------------------
# The raw objects

def _rebuild_shared(cls, dupfd, offset, ctype, code, length):
    return cls._rebuild(dupfd.detach(), offset, ctype, code, length)


class SharedValue(_core.SharedValue):
    """One item of a simple ctypes type in shared memory: what RawValue()
    returns for a type code or a simple ctypes type (`.value`)."""
    __slots__ = ()

    def __repr__(self):
        return '%s(%r)' % (self._type_.__name__, self.value)

    def __reduce__(self):
        if context.get_spawning_popen() is None:
            _not_inherited(self._type_.__name__)
        fd, offset = self._shm_handle()
        return _rebuild_shared, (type(self), reduction.DupFd(fd), offset, self._type_,
                                 self._code, -1)


class SharedArray(_core.SharedArray):
    """Items of a simple ctypes type in shared memory: what RawArray()
    returns for a type code or a simple ctypes type (len, indexing, slicing;
    `.value` and `.raw` for 'c', `.value` for 'u')."""
    __slots__ = ()

    def _name(self):
        return '%s_Array_%d' % (self._type_.__name__, self._length_)

    def _ctypes_type(self):
        # Made here, so that ctypes names this module as the type's module.
        return self._type_ * self._length_

    def __repr__(self):
        return '<%s.%s object at %#x>' % (__name__, self._name(), id(self))

    def __reduce__(self):
        if context.get_spawning_popen() is None:
            _not_inherited(self._name())
        fd, offset = self._shm_handle()
        return _rebuild_shared, (type(self), reduction.DupFd(fd), offset, self._type_,
                                 self._code, self._length_)


def _reduce_ctype(obj):
    context.assert_spawning(obj)
    if isinstance(obj, ctypes.Array):
        return _rebuild_ctype, (obj._type_, obj._wrapper, obj._length_)
    return _rebuild_ctype, (type(obj), obj._wrapper, None)


def _rebuild_ctype(type_, wrapper, length):
    """A ctypes object of type_ (or an array of length of them) over the
    shared bytes `wrapper`."""
    if length is not None:
        type_ = type_ * length
    reduction.register(type_, _reduce_ctype)
    obj = type_.from_buffer(wrapper)
    obj._wrapper = wrapper
    return obj


def _new_ctype(type_):
    """A zeroed ctypes object of type_ in shared memory."""
    try:
        size = ctypes.sizeof(type_)
    except TypeError as e:
        if not _versions.SHAREDCTYPES_TYPECODE_MESSAGE:
            raise
        raise TypeError('bad typecode (must be a ctypes type or one of c, b, B, u, h, H, '
                        'i, I, l, L, q, Q, f or d)') from e
    wrapper = SharedArray(ctypes.c_ubyte, 'B', size)
    return _rebuild_ctype(type_, wrapper, None)


# ---------------------------------------------------------------------------
# The factories

def RawValue(typecode_or_type, *args):
    """A ctypes-like object in shared memory, initialised from args."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    code = _simple_codes.get(type_)
    if code is not None:
        if len(args) > 1:
            raise TypeError('__init__ expected at most 1 argument, got %d' % len(args))
        obj = SharedValue(type_, code)
        if args:
            obj.value = args[0]
        return obj
    obj = _new_ctype(type_)
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    """An array in shared memory: size zeroed items, or the items of an
    initializer sequence."""
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    code = _simple_codes.get(type_)
    if isinstance(size_or_initializer, int):
        if code is not None:
            return SharedArray(type_, code, size_or_initializer)
        return _new_ctype(type_ * size_or_initializer)
    if code is not None:
        obj = SharedArray(type_, code, len(size_or_initializer))
        obj[:] = size_or_initializer
        return obj
    obj = _new_ctype(type_ * len(size_or_initializer))
    obj.__init__(*size_or_initializer)
    return obj


def Value(typecode_or_type, *args, lock=True, ctx=None):
    """A synchronized shared value (the raw one if lock is False)."""
    return _with_lock(RawValue(typecode_or_type, *args), lock, ctx)


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    """A synchronized shared array (the raw one if lock is False)."""
    return _with_lock(RawArray(typecode_or_type, size_or_initializer), lock, ctx)


def _with_lock(obj, lock, ctx):
    if lock is False:
        return obj
    if lock in (True, None):
        ctx = ctx or context._default_context
        lock = ctx.RLock()
    if not hasattr(lock, 'acquire'):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return synchronized(obj, lock, ctx=ctx)


def copy(obj):
    """A new raw object in shared memory with obj's contents."""
    if isinstance(obj, (SharedValue, SharedArray)):
        return obj._copy()
    new_obj = _new_ctype(type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


def synchronized(obj, lock=None, ctx=None):
    """obj wrapped so that every access takes lock (a new RLock if None)."""
    assert not isinstance(obj, SynchronizedBase), 'object already synchronized'
    ctx = ctx or context._default_context
    if isinstance(obj, (SharedValue, ctypes._SimpleCData)):
        return Synchronized(obj, lock, ctx)
    if isinstance(obj, (SharedArray, ctypes.Array)):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    cls = type(obj)
    try:
        scls = _class_cache[cls]
    except KeyError:
        names = [field[0] for field in cls._fields_]
        d = {name: make_property(name) for name in names}
        classname = 'Synchronized' + cls.__name__
        scls = _class_cache[cls] = type(classname, (SynchronizedBase,), d)
    return scls(obj, lock, ctx)


# ---------------------------------------------------------------------------
# The synchronized wrappers

def _reduce_synchronized(self):
    context.assert_spawning(self)
    return synchronized, (self._obj, self._lock)


def _repr_synchronized(self):
    return '<%s wrapper for %s>' % (type(self).__name__, self._obj)


class SynchronizedBase:
    """Base of the synchronized wrappers; the wrapper of a Structure (whose
    fields become properties) is a Python subclass of it."""

    def __init__(self, obj, lock=None, ctx=None):
        self._obj = obj
        if lock:
            self._lock = lock
        else:
            ctx = ctx or context._default_context
            self._lock = ctx.RLock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    __reduce__ = _reduce_synchronized
    __repr__ = _repr_synchronized

    def get_obj(self):
        return self._obj

    def get_lock(self):
        return self._lock


def make_property(name):
    """A property reading and writing self._obj.<name> under the lock."""
    try:
        return prop_cache[name]
    except KeyError:
        pass

    def fget(self):
        with self:
            return getattr(self._obj, name)

    def fset(self, value):
        with self:
            setattr(self._obj, name, value)
    prop = prop_cache[name] = property(fget, fset)
    return prop


prop_cache = {}
_class_cache = class_cache = weakref.WeakKeyDictionary()
get_context = context._default_context.get_context      # the stdlib's names for these
reduce_ctype = _reduce_ctype
rebuild_ctype = _rebuild_ctype


def _default_lock(lock, ctx):
    if lock:
        return lock
    return (ctx or context._default_context).RLock()


class Synchronized(_core.Synchronized, SynchronizedBase):
    """A value whose `.value` takes the lock (C accessors for cmp's objects)."""

    def __new__(cls, obj, lock=None, ctx=None):
        return super().__new__(cls, obj, _default_lock(lock, ctx))

    __reduce__ = _reduce_synchronized
    __repr__ = _repr_synchronized


class SynchronizedArray(_core.SynchronizedArray, SynchronizedBase):
    """An array whose indexing and slicing take the lock."""

    def __new__(cls, obj, lock=None, ctx=None):
        return super().__new__(cls, obj, _default_lock(lock, ctx))

    __reduce__ = _reduce_synchronized
    __repr__ = _repr_synchronized

    def __getslice__(self, start, stop):
        return self[start:stop]

    def __setslice__(self, start, stop, values):
        self[start:stop] = values


class SynchronizedString(_core.SynchronizedString, SynchronizedArray):
    """A 'c' array whose `.value` and `.raw` take the lock."""
