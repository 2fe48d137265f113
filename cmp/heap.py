"""A heap of shared memory blocks (mirrors multiprocessing.heap).

An Arena is one anonymous shared mapping (a memfd: no name in /dev/shm, so a
crash leaves nothing behind); it is inherited across fork and pickles with
its descriptor while spawning or over a Unix-socket Connection. Heap carves
blocks out of arenas with best fit and merges a freed block with free
neighbours; BufferWrapper is a block that is freed when the wrapper dies.
cmp's own Value and Array live in C segments and do not use this heap; it is
here for code that does (and keeps the stdlib's internal layout, which
CPython's tests inspect).
"""
import bisect
import mmap
import os
import sys
import threading
from collections import defaultdict

from . import reduction, util
from .context import assert_spawning  # noqa: F401  (a name of the stdlib's heap)

__all__ = ['BufferWrapper']


class Arena:
    """A shared memory area of size bytes backed by a memfd; fd is given
    when the arena is rebuilt in another process."""

    def __init__(self, size, fd=-1):
        self.size = size
        self.fd = fd
        if fd == -1:
            self.fd = os.memfd_create('cmp-heap-%d' % os.getpid(), os.MFD_CLOEXEC)
            util.Finalize(self, os.close, (self.fd,))
            os.ftruncate(self.fd, size)
        self.buffer = mmap.mmap(self.fd, self.size)


def reduce_arena(a):
    if a.fd == -1:
        raise ValueError('Arena is unpicklable because '
                         'forking was enabled when it was created')
    return rebuild_arena, (a.size, reduction.DupFd(a.fd))


def rebuild_arena(size, dupfd):
    return Arena(size, dupfd.detach())


reduction.register(Arena, reduce_arena)


class Heap:
    """Blocks (arena, start, stop) of shared memory.

    Free blocks are indexed by length (_lengths sorted, _len_to_seq[length]
    the blocks of that length) and by their ends (_start_to_block,
    _stop_to_block) for merging; allocated ones by arena
    (_allocated_blocks[arena] = {(start, stop)}). free() may run from a
    garbage-collector finalizer while the heap's lock is held by the same
    thread: it then only queues the block (_pending_free_blocks), and the
    next malloc() frees it.
    """

    _alignment = 8
    _DISCARD_FREE_SPACE_LARGER_THAN = 4 * 1024 ** 2   # unmap an empty arena past this
    _DOUBLE_ARENA_SIZE_UNTIL = 4 * 1024 ** 2

    def __init__(self, size=mmap.PAGESIZE):
        self._lastpid = os.getpid()
        self._lock = threading.Lock()
        self._size = size
        self._lengths = []
        self._len_to_seq = {}
        self._start_to_block = {}
        self._stop_to_block = {}
        self._allocated_blocks = defaultdict(set)
        self._arenas = []
        self._pending_free_blocks = []
        self._n_mallocs = 0
        self._n_frees = 0

    @staticmethod
    def _roundup(n, alignment):
        return (n + alignment - 1) & ~(alignment - 1)   # alignment is a power of 2

    def _new_arena(self, size):
        length = self._roundup(max(self._size, size), mmap.PAGESIZE)
        if self._size < self._DOUBLE_ARENA_SIZE_UNTIL:
            self._size *= 2     # fewer, larger arenas as the heap grows
        util.info('allocating a new mmap of length %d', length)
        arena = Arena(length)
        self._arenas.append(arena)
        return (arena, 0, length)

    def _discard_arena(self, arena):
        """Unmap an arena that is all one free block (its last allocated
        block was just freed), if it is large."""
        length = arena.size
        if length < self._DISCARD_FREE_SPACE_LARGER_THAN:
            return
        del self._start_to_block[(arena, 0)]
        del self._stop_to_block[(arena, length)]
        self._arenas.remove(arena)
        self._unindex_length((arena, 0, length), length)

    def _unindex_length(self, block, length):
        seq = self._len_to_seq[length]
        seq.remove(block)
        if not seq:
            del self._len_to_seq[length]
            del self._lengths[bisect.bisect_left(self._lengths, length)]

    def _malloc(self, size):
        i = bisect.bisect_left(self._lengths, size)
        if i == len(self._lengths):
            return self._new_arena(size)
        length = self._lengths[i]
        block = self._len_to_seq[length][-1]
        self._unindex_length(block, length)
        arena, start, stop = block
        del self._start_to_block[(arena, start)]
        del self._stop_to_block[(arena, stop)]
        return block

    def _add_free_block(self, block):
        arena, start, stop = block
        block = self._absorb_neighbours(arena, start, stop)
        arena, start, stop = block
        length = stop - start
        if length not in self._len_to_seq:
            bisect.insort(self._lengths, length)
            self._len_to_seq[length] = []
        self._len_to_seq[length].append(block)
        self._start_to_block[(arena, start)] = block
        self._stop_to_block[(arena, stop)] = block

    def _absorb_neighbours(self, arena, start, stop):
        """Merge the free blocks just before and after [start, stop) into it."""
        before = self._stop_to_block.get((arena, start))
        if before is not None:
            self._absorb(before)
            start = before[1]
        after = self._start_to_block.get((arena, stop))
        if after is not None:
            self._absorb(after)
            stop = after[2]
        return (arena, start, stop)

    def _absorb(self, block):
        """Take a free block out of the indexes."""
        arena, start, stop = block
        del self._start_to_block[(arena, start)]
        del self._stop_to_block[(arena, stop)]
        self._unindex_length(block, stop - start)

    def _remove_allocated_block(self, block):
        arena, start, stop = block
        blocks = self._allocated_blocks[arena]
        blocks.remove((start, stop))
        if not blocks:
            del self._allocated_blocks[arena]
            # The arena is now one free block: give it back if it is large.
            self._discard_arena(arena)

    def _free_pending_blocks(self):
        while self._pending_free_blocks:
            self._free(self._pending_free_blocks.pop())

    def _free(self, block):
        self._add_free_block(block)
        self._remove_allocated_block(block)

    def free(self, block):
        """Free a block from malloc(). Never blocks: called from a finalizer
        that interrupted this very heap's malloc(), it queues the block."""
        if os.getpid() != self._lastpid:
            raise ValueError(
                "My pid ({0:n}) is not last pid {1:n}".format(os.getpid(), self._lastpid))
        if not self._lock.acquire(False):
            self._pending_free_blocks.append(block)
            return
        try:
            self._n_frees += 1
            self._free_pending_blocks()
            self._free(block)
        finally:
            self._lock.release()

    def malloc(self, size):
        """A block (arena, start, stop) of at least size bytes."""
        if size < 0:
            raise ValueError("Size {0:n} out of range".format(size))
        if sys.maxsize <= size:
            raise OverflowError("Size {0:n} too large".format(size))
        if os.getpid() != self._lastpid:
            self.__init__()     # a forked child starts an empty heap of its own
        with self._lock:
            self._n_mallocs += 1
            self._free_pending_blocks()
            size = self._roundup(max(size, 1), self._alignment)
            arena, start, stop = self._malloc(size)
            real_stop = start + size
            if real_stop < stop:
                self._add_free_block((arena, real_stop, stop))
            self._allocated_blocks[arena].add((start, real_stop))
            return (arena, start, real_stop)


class BufferWrapper:
    """size bytes of the shared heap, freed when the wrapper is collected."""

    _heap = Heap()

    def __init__(self, size):
        if size < 0:
            raise ValueError("Size {0:n} out of range".format(size))
        if sys.maxsize <= size:
            raise OverflowError("Size {0:n} too large".format(size))
        block = BufferWrapper._heap.malloc(size)
        self._state = (block, size)
        util.Finalize(self, BufferWrapper._heap.free, args=(block,))

    def create_memoryview(self):
        (arena, start, stop), size = self._state
        return memoryview(arena.buffer)[start:start + size]
