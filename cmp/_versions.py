"""What the interpreter's own multiprocessing does differently from one
CPython version to the next: the one place cmp looks at sys.version_info.

cmp follows the interpreter it runs on. Every behaviour that changed between
3.11 and the newest CPython is a named switch here, set once at import; the
modules ask the switch, never the version. Each line says what the stdlib of
that version does (read from its Lib/multiprocessing and What's New).
"""
import os
import sys

__all__ = []     # a private module (listed by code that imports every module, as CPython's tests)

_V = sys.version_info[:2]

# -- 3.12 --------------------------------------------------------------------

# Forking a process that runs more than one thread warns: DeprecationWarning
# "This process (pid=N) is multi-threaded, use of fork() may lead to
# deadlocks in the child." (issued, then cleared, so it never raises).
FORK_WARNS_IF_THREADED = _V >= (3, 12)
# From 3.15 the warning is not cleared: where warnings are errors, starting
# the process raises it (after the child was forked).
FORK_WARNING_RAISES = _V >= (3, 15)

# Queue._terminate_broken(): concurrent.futures closes a broken call queue
# with it.
QUEUE_TERMINATE_BROKEN = _V >= (3, 12)

# Queue[int] is a types.GenericAlias.
QUEUE_GENERIC = _V >= (3, 12)

# The connection handshake names its digest: the challenge is
# b'{sha256}' + 40 random bytes and the answer b'{sha256}' + HMAC; a legacy
# 20-byte challenge or 16-byte answer still means HMAC-MD5. Before 3.12:
# HMAC-MD5 of 20 random bytes only. An authkey of b'' authenticates too.
HMAC_NAMES_DIGEST = _V >= (3, 12)

# A fork or forkserver child runs its atexit handlers before os._exit(): the
# parent's are cleared at the fork, util._exit_function is registered, and
# whatever the child's target registers runs when it ends (gh-83856).
FORK_CHILD_RUNS_ATEXIT = _V >= (3, 12)

# -- 3.13 --------------------------------------------------------------------

# Pool() starts os.process_cpu_count() workers (the CPUs this process may
# use), not os.cpu_count().
DEFAULT_WORKERS = os.process_cpu_count if _V >= (3, 13) else os.cpu_count

# managers.DictProxy[str, int] and ListProxy[int] are GenericAliases.
PROXY_GENERIC = _V >= (3, 13)

# util: a WARNING level (30) and a logging helper for it (util._warn in 3.13,
# public util.warn from 3.14); log calls pass stacklevel=2, so a record names
# the caller of util.debug() and friends.
UTIL_WARNING = _V >= (3, 13)
UTIL_WARN_NAME = 'warn' if _V >= (3, 14) else '_warn'
LOG_STACKLEVEL = 2 if _V >= (3, 13) else 1

# Starting a child with spawn or forkserver leaves the default start method
# unset if it was (before, it fixed it, as get_start_method() does).
START_LEAVES_DEFAULT_UNSET = _V >= (3, 13)

# A Unix Listener's arbitrary address is pymp-XXXX/sock-<hex> (tempfile.mktemp
# names listener-XXXX before).
SOCK_ADDRESS_PREFIX = 'sock-' if _V >= (3, 13) else None

# resource_tracker: the 'dummy' rtype, cleanup_noop and _fork_intent; the
# tracker's messages are JSON (_decode_message), main() exits non-zero after
# cleaning up, and its leak warning names the resources.
TRACKER_313 = _V >= (3, 13)

# The fork server imports the main module (its preloaded '__main__'): before
# 3.13 the stdlib's is never told the main module's path, so each child
# imports it instead.
FORKSERVER_PRELOADS_MAIN = _V >= (3, 13)

# -- 3.14 --------------------------------------------------------------------

# Linux's default start method, and the order get_all_start_methods() lists
# them in (the default first).
DEFAULT_START_METHOD = 'forkserver' if _V >= (3, 14) else 'fork'
ALL_START_METHODS = (['forkserver', 'fork', 'spawn'] if _V >= (3, 14)
                     else ['fork', 'spawn', 'forkserver'])

# Process.interrupt() sends SIGINT.
PROCESS_INTERRUPT = _V >= (3, 14)

# A requester authenticates with the fork server on the request's socket, so
# a server that dies before answering resets it (ConnectionResetError);
# before, the requester read the pid from a pipe the server held (EOFError).
FORKSERVER_HANDSHAKE = _V >= (3, 14)

# Lock, RLock, Semaphore and BoundedSemaphore have locked(); so do the
# managers' lock and condition proxies.
LOCK_LOCKED = _V >= (3, 14)

# Managers: SyncManager.set() and SetProxy; ListProxy.clear/copy; DictProxy
# |, |=, reversed() and fromkeys; ListProxy and DictProxy registered as
# MutableSequence and MutableMapping.
MANAGER_SETS = _V >= (3, 14)

# ShareableList.index() of a missing value: "ShareableList.index(x): x not in
# list" (before: "<value!r> not in this container").
SHAREABLE_LIST_INDEX_SAYS_LIST = _V >= (3, 14)

# connection.BUFSIZE: 64 KiB (8 KiB before).
CONNECTION_BUFSIZE = 64 * 1024 if _V >= (3, 14) else 8192

# -- 3.15 --------------------------------------------------------------------

# ResourceTracker._use_simple_format starts False (JSON messages; a name is
# limited to 255 bytes, not by the 512-byte line).
TRACKER_SIMPLE_FORMAT = _V < (3, 15)

# set_forkserver_preload(modules, *, on_error='ignore'|'warn'|'fail').
FORKSERVER_PRELOAD_ON_ERROR = _V >= (3, 15)

# Value()/RawValue() of an unknown type code: TypeError "bad typecode (must
# be a ctypes type or one of c, b, B, u, h, H, i, I, l, L, q, Q, f or d)"
# (before: ctypes.sizeof's "this type has no size").
SHAREDCTYPES_TYPECODE_MESSAGE = _V >= (3, 15)
