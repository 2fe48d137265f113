import cmp
from cmp.queues import Queue

def square(x: int) -> int:
    return x * x

if __name__ == '__main__':
    q: Queue[int] = Queue(ring_size=1 << 16)
    q.put(1)
    n: int = q.get(timeout=1.0)
    many: list[int] = q.get_many(10, timeout=0.5)
    a, b = cmp.Pipe()
    a.send_bytes(b'x')
    data: bytes = b.recv_bytes()
    ok: bool = b.poll(0.1)
    with cmp.Pool(2) as pool:
        r: list[int] = pool.map(square, range(4))
        ar = pool.apply_async(square, (3,))
        v: int = ar.get(timeout=5)
    lock = cmp.Lock()
    with lock:
        pass
    got: bool = lock.acquire(timeout=0.1)
    p = cmp.Process(target=square, args=(2,))
    p.start()
    p.join()
    code: int | None = p.exitcode
    val = cmp.Value('i', 0)
    with val.get_lock():
        pass
