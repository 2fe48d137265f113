"""Connection benchmarks: the same workloads on multiprocessing and on cmp.

Each workload starts one child, lets it get ready, then times only the
message traffic (python -m cmp bench connection).
"""
import time

SMALL = ('task', 42, 3.5, None)        # a small, typical message
MIB = 1 << 20


def _echo(conn):
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)


def _drain(conn):
    n = 0
    while conn.recv() is not None:
        n += 1
    conn.send(n)


def _drain_bytes(conn, size):
    n = 0
    while True:
        b = conn.recv_bytes()
        if len(b) != size:
            break
        n += 1
    conn.send(n)


def _with_child(mp, target, args, body):
    parent, child = mp.Pipe()
    p = mp.Process(target=target, args=(child,) + args)
    p.start()
    child.close()
    try:
        return body(parent)
    finally:
        p.join(30)
        if p.exitcode is None:
            p.kill()
            p.join()


def pingpong(mp, scale=1.0):
    """Round trips of a small object between two processes."""
    n = max(10, int(20000 * scale))

    def body(conn):
        for _ in range(50):                       # warm up
            conn.send(SMALL)
            conn.recv()
        t0 = time.perf_counter()
        for _ in range(n):
            conn.send(SMALL)
            conn.recv()
        dt = time.perf_counter() - t0
        conn.send(None)
        return n, dt
    return _with_child(mp, _echo, (), body)


def stream_small(mp, scale=1.0):
    """One-way stream of small objects (the receiver counts them)."""
    n = max(10, int(100000 * scale))

    def body(conn):
        conn.send(SMALL)                          # the child is up
        t0 = time.perf_counter()
        for _ in range(n):
            conn.send(SMALL)
        conn.send(None)
        got = conn.recv()
        dt = time.perf_counter() - t0
        assert got == n + 1, got
        return n, dt
    return _with_child(mp, _drain, (), body)


def stream_1mib(mp, scale=1.0):
    """One-way stream of 1 MiB send_bytes / recv_bytes messages."""
    n = max(3, int(1000 * scale))
    payload = bytes(MIB)

    def body(conn):
        conn.send_bytes(payload)                  # the child is up
        t0 = time.perf_counter()
        for _ in range(n):
            conn.send_bytes(payload)
        conn.send_bytes(b'end')
        got = conn.recv()
        dt = time.perf_counter() - t0
        assert got == n + 1, got
        return n, dt
    return _with_child(mp, _drain_bytes, (MIB,), body)


WORKLOADS = {
    'connection.pingpong': (pingpong, 'round trips'),
    'connection.stream_small': (stream_small, 'messages'),
    'connection.stream_1mib': (stream_1mib, 'MiB messages'),
}
