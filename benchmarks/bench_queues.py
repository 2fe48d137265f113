"""Queues: one producer to one consumer (small ints, 1 MiB bytes), 4 producers
to 4 consumers, batches (put_many/get_many where the queue has them).

Each workload runs with mp = multiprocessing or cmp. The `.faster_fifo`
workloads run the same traffic through faster_fifo.Queue (processes from mp);
compare their rates with the cmp column of the plain workload. They are
left out when faster-fifo does not import.
"""
import time

try:
    import faster_fifo
except ImportError:         # pragma: no cover - optional
    faster_fifo = None

SMALL = 200_000
BIG = 400
MPMC = 200_000
BATCH = 1000
MANY = 1_000_000
BIG_ITEM = b'x' * (1 << 20)


def _n(base, scale):
    return max(1, int(base * scale))


def _make(mp, kind):
    if kind == 'ff':
        # room for a few 1 MiB messages, like the others' default buffers
        return faster_fifo.Queue(max_size_bytes=8 << 20)
    return mp.Queue()


def _ff_get(q):
    # faster-fifo's get() defaults to a 10 s timeout; wait as long as needed
    return q.get(timeout=1e9)


# -- one producer, one consumer ------------------------------------------------

def _producer(q, n, item):
    q.put('ready')
    for _ in range(n):
        q.put(item)


def _spsc(mp, kind, n, item):
    q = _make(mp, kind)
    get = (lambda: _ff_get(q)) if kind == 'ff' else q.get
    p = mp.Process(target=_producer, args=(q, n, item))
    p.start()
    get()                   # the producer runs: start the clock
    t = time.perf_counter()
    for _ in range(n):
        get()
    dt = time.perf_counter() - t
    p.join()
    return n, dt


def spsc_small(mp, scale=1.0):
    return _spsc(mp, 'q', _n(SMALL, scale), 12345)


def spsc_small_ff(mp, scale=1.0):
    return _spsc(mp, 'ff', _n(SMALL, scale), 12345)


def bytes_1mib(mp, scale=1.0):
    return _spsc(mp, 'q', _n(BIG, scale), BIG_ITEM)


def bytes_1mib_ff(mp, scale=1.0):
    return _spsc(mp, 'ff', _n(BIG, scale), BIG_ITEM)


# -- four producers, four consumers --------------------------------------------

def _mpmc_producer(q, start, n):
    start.get()
    for i in range(n):
        q.put(i)


def _mpmc_consumer(q, done, ff):
    count = 0
    while True:
        x = _ff_get(q) if ff else q.get()
        if x is None:
            break
        count += 1
    done.put(count)


def _mpmc(mp, kind, total):
    ff = kind == 'ff'
    q = _make(mp, kind)
    start, done = mp.Queue(), mp.Queue()
    per = total // 4
    prods = [mp.Process(target=_mpmc_producer, args=(q, start, per)) for _ in range(4)]
    cons = [mp.Process(target=_mpmc_consumer, args=(q, done, ff)) for _ in range(4)]
    for p in prods + cons:
        p.start()
    time.sleep(0.2)         # let them all reach their first wait
    t = time.perf_counter()
    for _ in prods:
        start.put(1)
    for p in prods:
        p.join()
    for _ in cons:
        q.put(None)
    got = sum(done.get() for _ in cons)
    dt = time.perf_counter() - t
    for p in cons:
        p.join()
    assert got == per * 4, (got, per * 4)
    return got, dt


def mpmc_4x4(mp, scale=1.0):
    return _mpmc(mp, 'q', _n(MPMC, scale))


def mpmc_4x4_ff(mp, scale=1.0):
    return _mpmc(mp, 'ff', _n(MPMC, scale))


# -- batches ---------------------------------------------------------------------

def _batch_producer(q, n, mode):
    q.put('ready')
    items = list(range(BATCH))
    for _ in range(n // BATCH):
        if mode == 'many':
            q.put_many(items)
        elif mode == 'ff':
            q.put_many(items, timeout=1e9)
        else:
            for x in items:
                q.put(x)


def _batches(mp, mode, n):
    n = max(BATCH, n // BATCH * BATCH)
    q = _make(mp, 'ff' if mode == 'ff' else 'q')
    p = mp.Process(target=_batch_producer, args=(q, n, mode))
    p.start()
    got = 0
    if mode == 'ff':
        _ff_get(q)
        t = time.perf_counter()
        while got < n:
            got += len(q.get_many(max_messages_to_get=BATCH, timeout=1e9))
    elif mode == 'many':
        q.get()
        t = time.perf_counter()
        while got < n:
            got += len(q.get_many(BATCH))
    else:
        q.get()
        t = time.perf_counter()
        for _ in range(n):
            q.get()
        got = n
    dt = time.perf_counter() - t
    p.join()
    return got, dt


def get_many(mp, scale=1.0):
    # the stdlib has no put_many/get_many: it moves the items one by one
    mode = 'many' if hasattr(mp.Queue(), 'get_many') else 'one'
    return _batches(mp, mode, _n(MANY, scale))


def get_many_ff(mp, scale=1.0):
    return _batches(mp, 'ff', _n(MANY, scale))


WORKLOADS = {
    'queue.spsc_small': (spsc_small, 'items'),
    'queue.bytes_1mib': (bytes_1mib, 'items'),
    'queue.mpmc_4x4': (mpmc_4x4, 'items'),
    'queue.get_many': (get_many, 'items'),
}
if faster_fifo is not None:
    WORKLOADS.update({
        'queue.spsc_small.faster_fifo': (spsc_small_ff, 'items'),
        'queue.bytes_1mib.faster_fifo': (bytes_1mib_ff, 'items'),
        'queue.mpmc_4x4.faster_fifo': (mpmc_4x4_ff, 'items'),
        'queue.get_many.faster_fifo': (get_many_ff, 'items'),
    })
