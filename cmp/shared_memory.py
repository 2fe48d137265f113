"""Named shared memory blocks (mirrors multiprocessing.shared_memory).

Blocks live under /dev/shm with the stdlib's names, so cmp and stdlib
processes attach each other's blocks. Only the process that creates a block
registers it for cleanup (with track=True, the default); attaching never
does. A registered block still present when its creator (and the children it
forked) have exited, however they exited, is unlinked with the stdlib's
warning. See the README's differences.
"""
import os
import struct
import types
from functools import partial

from . import _core, _versions, resource_tracker

__all__ = ['SharedMemory', 'ShareableList']

_USE_POSIX = True
_O_CREX = os.O_CREAT | os.O_EXCL
_SHM_SAFE_NAME_LENGTH = 14      # the shortest limit of the platforms the stdlib knows
_SHM_NAME_PREFIX = '/psm_'


def _make_filename():
    """A fresh random block name, with its leading '/' (e.g. '/psm_1a2b3c4d')."""
    nbytes = (_SHM_SAFE_NAME_LENGTH - len(_SHM_NAME_PREFIX)) // 2
    return _SHM_NAME_PREFIX + os.urandom(nbytes).hex()

_encoding = 'utf8'


class SharedMemory:
    """A named block of shared memory: create it, or attach to it by name."""

    _mmap = None
    _buf = None
    _track_slot = None

    def __init__(self, name=None, create=False, size=0, *, track=True):
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        if name is not None:
            name = '/' + name
        if create and track:
            # The stdlib's register() starts the tracker, or relaunches a
            # killed one with its warning; shm_create registers the block.
            resource_tracker.ensure_running()
        if create and name is None:
            self._create_fresh(size, track)
        elif create:
            self._name, self._mmap, self._track_slot = _core.shm_create(name, size, track)
        else:
            self._mmap, size = _core.shm_attach(name)
            self._name = name
        self._size = size
        self._buf = memoryview(self._mmap)

    def _create_fresh(self, size, track):
        # Names come from _make_filename(), as in the stdlib (tests patch it).
        while True:
            name = _make_filename()
            try:
                self._name, self._mmap, self._track_slot = _core.shm_create(name, size, track)
                return
            except FileExistsError:
                pass

    def __del__(self):
        # Never raise from here: while views of the block are alive the
        # mapping stays; it goes with the last of them.
        try:
            self.close()
        except (OSError, BufferError):
            pass

    def __reduce__(self):
        return self.__class__, (self.name, False, self.size)

    def __repr__(self):
        return f'{self.__class__.__name__}({self.name!r}, size={self.size})'

    @property
    def buf(self):
        """A memoryview of the block's contents."""
        return self._buf

    @property
    def name(self):
        """The name to attach to the block by."""
        return self._name[1:] if self._name.startswith('/') else self._name

    @property
    def size(self):
        """Size of the block in bytes."""
        return self._size

    def close(self):
        """Unmap the block from this process (BufferError while views of it
        are still exported)."""
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self):
        """Remove the block's name; its memory is freed once every process
        has closed it. Call it once, from one process."""
        _core.shm_unlink(self._name)
        self._forget()

    def _forget(self):
        if self._track_slot is not None:
            # By name, as resource_tracker.unregister does.
            _core.tracker_forget(self._name, resource_tracker._KIND['shared_memory'])
            self._track_slot = None


# ---------------------------------------------------------------------------
# ShareableList: the stdlib's layout, byte for byte, so either side can
# attach a list the other created.
#
#   q                    number of items n
#   q * (n + 1)          offsets of the items in the data area (0, ..., end)
#   data                 each item packed with its format
#   8s * n               each item's struct format, NUL padded
#   b * n                each item's back-transform code (see _DECODERS)

_ALIGN = 8
_FORMATS = {int: 'q', float: 'd', bool: 'xxxxxxx?', type(None): 'xxxxxx?x',
            str: '%ds', bytes: '%ds'}
_KIND_PLAIN, _KIND_STR, _KIND_BYTES, _KIND_NONE = range(4)
_DECODERS = {
    _KIND_PLAIN: lambda v: v,
    _KIND_STR: lambda v: v.rstrip(b'\x00').decode(_encoding),
    _KIND_BYTES: lambda v: v.rstrip(b'\x00'),
    _KIND_NONE: lambda v: None,
}


def _kind(value):
    if isinstance(value, str):
        return _KIND_STR
    if isinstance(value, bytes):
        return _KIND_BYTES
    if value is None:
        return _KIND_NONE
    return _KIND_PLAIN


def _format_for(value):
    fmt = _FORMATS[type(value)]
    if isinstance(value, (str, bytes)):
        # Room for the value rounded up to the alignment (the stdlib sizes
        # str slots by characters, not encoded bytes; so do we).
        fmt %= _ALIGN * (len(value) // _ALIGN + 1)
    return fmt


class ShareableList:
    """A fixed-length list of int, float, bool, str, bytes and None in a
    shared memory block; str and bytes items keep the room they started with."""

    def __init__(self, sequence=None, *, name=None):
        if name is None or sequence is not None:
            sequence = sequence or ()
            formats = [_format_for(item) for item in sequence]
            n = len(formats)
            offsets = [0]
            for fmt in formats:
                offsets.append(offsets[-1] + (int(fmt[:-1]) if fmt[-1] == 's' else _ALIGN))
            size = struct.calcsize('q' * (n + 2) + ''.join(formats) + '8s' * n + 'b' * n)
            self.shm = SharedMemory(name, create=True, size=size)
            buf = self.shm.buf
            struct.pack_into('q' * (n + 2), buf, 0, n, *offsets)
            self._list_len = n
            self._allocated_offsets = offsets
            struct.pack_into(''.join(formats), buf, self._offset_data_start,
                             *(v.encode(_encoding) if isinstance(v, str) else v
                               for v in sequence))
            struct.pack_into('8s' * n, buf, self._offset_packing_formats,
                             *(f.encode(_encoding) for f in formats))
            struct.pack_into('b' * n, buf, self._offset_back_transform_codes,
                             *(_kind(v) for v in sequence))
        else:
            self.shm = SharedMemory(name)
            self._list_len = struct.unpack_from('q', self.shm.buf, 0)[0]
            self._allocated_offsets = list(
                struct.unpack_from('q' * (self._list_len + 1), self.shm.buf, 8))

    # -- layout ------------------------------------------------------------

    @property
    def _offset_data_start(self):
        return (self._list_len + 2) * 8

    @property
    def _offset_packing_formats(self):
        return self._offset_data_start + self._allocated_offsets[-1]

    @property
    def _offset_back_transform_codes(self):
        return self._offset_packing_formats + self._list_len * 8

    def _position(self, position):
        if position < 0:
            position += self._list_len
        if not 0 <= position < self._list_len:
            raise IndexError('index out of range')
        return position

    def _get_packing_format(self, position):
        raw = struct.unpack_from('8s', self.shm.buf,
                                 self._offset_packing_formats + position * 8)[0]
        return raw.rstrip(b'\x00').decode(_encoding)

    def _get_back_transform(self, position):
        code = struct.unpack_from('b', self.shm.buf,
                                  self._offset_back_transform_codes + position)[0]
        return _DECODERS[code]

    def _set_packing_format_and_transform(self, position, fmt, value):
        struct.pack_into('8s', self.shm.buf, self._offset_packing_formats + position * 8,
                         fmt.encode(_encoding))
        struct.pack_into('b', self.shm.buf, self._offset_back_transform_codes + position,
                         _kind(value))

    # -- the list ----------------------------------------------------------

    def __getitem__(self, position):
        position = self._position(position)
        fmt = self._get_packing_format(position)
        offset = self._offset_data_start + self._allocated_offsets[position]
        value, = struct.unpack_from(fmt, self.shm.buf, offset)
        return self._get_back_transform(position)(value)

    def __setitem__(self, position, value):
        try:
            position = self._position(position)
        except IndexError:
            raise IndexError('assignment index out of range') from None
        start = self._allocated_offsets[position]
        current = self._get_packing_format(position)
        if isinstance(value, (str, bytes)):
            room = self._allocated_offsets[position + 1] - start
            encoded = value.encode(_encoding) if isinstance(value, str) else value
            if len(encoded) > room:
                raise ValueError('bytes/str item exceeds available storage')
            fmt = current if current[-1] == 's' else '%ds' % room
        else:
            fmt = _FORMATS[type(value)]
            encoded = value
        self._set_packing_format_and_transform(position, fmt, value)
        struct.pack_into(fmt, self.shm.buf, self._offset_data_start + start, encoded)

    def __reduce__(self):
        return partial(self.__class__, name=self.shm.name), ()

    def __len__(self):
        return struct.unpack_from('q', self.shm.buf, 0)[0]

    def __repr__(self):
        return f'{self.__class__.__name__}({list(self)}, name={self.shm.name!r})'

    @property
    def format(self):
        """The struct format of all the items, concatenated."""
        return ''.join(self._get_packing_format(i) for i in range(self._list_len))

    def count(self, value):
        """Number of occurrences of value."""
        return sum(value == entry for entry in self)

    def index(self, value):
        """Position of the first occurrence of value (ValueError if absent)."""
        for position, entry in enumerate(self):
            if value == entry:
                return position
        if _versions.SHAREABLE_LIST_INDEX_SAYS_LIST:
            raise ValueError('ShareableList.index(x): x not in list')
        raise ValueError(f'{value!r} not in this container')

    __class_getitem__ = classmethod(types.GenericAlias)
