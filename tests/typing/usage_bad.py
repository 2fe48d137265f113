# Each line below is a type error mypy must report (see test_typing.py).
import cmp
from cmp.queues import Queue

q: Queue[int] = Queue()
q.get_many('ten')
s: str = q.get()
cmp.Pipe()[0].send_bytes(42)
cmp.Pool(2).map(len, 3)
cmp.Lock().acquire(timeout='soon')
