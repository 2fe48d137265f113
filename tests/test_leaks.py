"""Create/close loops of every object type leak nothing.

Each type runs in its own interpreter (a hang fails one test): a warm-up round (lazily
started helpers such as the resource tracker, first-use caches), then ROUNDS rounds of
create, use, close; the counts before and after the rounds must be equal. Counted: open
descriptors, child processes (zombies included), threads (C threads too), shared mappings
(memfd and /dev/shm) and the /dev/shm names the objects had. Not a timing test.
"""
import json

import pytest

from support import run

ROUNDS = 20

SNIPPET = r'''
import gc, json, os, sys, threading
import cmp.shared_memory

def children():
    me, n = str(os.getpid()), 0
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/stat' % pid) as f:
                    n += f.read().rsplit(')', 1)[1].split()[1] == me
            except OSError:
                pass
    return n

def shared_mappings():
    with open('/proc/self/maps') as f:
        return sum('/memfd:' in line or '/dev/shm/' in line for line in f)

def counts():
    gc.collect()
    return {'fds': len(os.listdir('/proc/self/fd')), 'children': children(),
            'threads': len(os.listdir('/proc/self/task')), 'mappings': shared_mappings()}

shm_names = []

def use_lock(lock):
    with lock:
        pass

def pipe():
    a, b = mp.Pipe()
    a.send('x'); assert b.recv() == 'x'
    a.close(); b.close()

def simplex_pipe():
    r, w = mp.Pipe(duplex=False)
    w.send_bytes(b'x' * 100000); assert len(r.recv_bytes()) == 100000
    r.close(); w.close()

def any_queue(cls, big):
    # big: an item larger than the ring, streamed by a feeder thread (a SimpleQueue has none:
    # its put() would wait for a reader, as the stdlib's does).
    def make():
        q = cls()
        q.put(b'x' * big); q.put('y')
        get = q.get if cls is mp.SimpleQueue else lambda: q.get(timeout=30)
        assert len(get()) == big and get() == 'y'
        if hasattr(q, 'task_done'):
            q.task_done(); q.task_done(); q.join()
        q.close()
        if hasattr(q, 'join_thread'):
            q.join_thread()
    return make

def condition():
    c = mp.Condition()
    with c:
        c.notify_all()
        c.wait(0)

def event():
    e = mp.Event(); e.set(); assert e.wait(0); e.clear()

def barrier():
    b = mp.Barrier(1); b.wait(); b.abort()

def value():
    v = mp.Value('i', 1)
    with v.get_lock():
        v.value += 1

def array():
    a = mp.Array('d', 100); a[:] = [1.0] * 100

def raw_value():
    v = mp.RawValue('q', 7); v.value += 1

def raw_array():
    a = mp.RawArray('b', 1000); a[0] = 1

def shared_memory():
    m = cmp.shared_memory.SharedMemory(create=True, size=10000)
    shm_names.append(m.name)
    m.buf[0] = 1
    m.close(); m.unlink()

def shareable_list():
    sl = cmp.shared_memory.ShareableList([1, 'two', 3.0, None])
    shm_names.append(sl.shm.name)
    sl[0] = 5
    sl.shm.close(); sl.shm.unlink()

def manager():
    with mp.Manager() as m:
        d = m.dict(); d['a'] = m.list([1, 2])
        assert d['a'][1] == 2
        q = m.Queue(); q.put(1); assert q.get() == 1

def pool():
    with mp.Pool(2) as p:
        assert p.map(abs, range(-20, 0)) == list(range(20, 0, -1))
        assert p.apply_async(abs, (-1,)).get(30) == 1
        p.close(); p.join()

def listener_client():
    from cmp.connection import Client, Listener
    for family, authkey in (('AF_UNIX', None), ('AF_INET', b'secret')):
        with Listener(family=family, authkey=authkey) as ln:
            th = threading.Thread(target=lambda: conns.append(ln.accept()))
            conns = []
            th.start()
            c = Client(ln.address, family=family, authkey=authkey)
            th.join()
            c.send([1, 2]); assert conns[0].recv() == [1, 2]
            c.close(); conns[0].close()

KINDS = {
    'Pipe': pipe, 'Pipe(duplex=False)': simplex_pipe,
    'Queue': any_queue(mp.Queue, 5000000),
    'JoinableQueue': any_queue(mp.JoinableQueue, 5000000),
    'SimpleQueue': any_queue(mp.SimpleQueue, 1000),
    'Lock': lambda: use_lock(mp.Lock()), 'RLock': lambda: use_lock(mp.RLock()),
    'Semaphore': lambda: use_lock(mp.Semaphore(2)),
    'BoundedSemaphore': lambda: use_lock(mp.BoundedSemaphore(2)),
    'Condition': condition, 'Event': event, 'Barrier': barrier,
    'Value': value, 'Array': array, 'RawValue': raw_value, 'RawArray': raw_array,
    'SharedMemory': shared_memory, 'ShareableList': shareable_list,
    'Manager': manager, 'Pool(2)': pool, 'Listener/Client': listener_client,
}

if __name__ == '__main__':
    kind, rounds = sys.argv[1], int(sys.argv[2])
    make = KINDS[kind]
    make()      # warm-up
    before = counts()
    for _ in range(rounds):
        make()
    after = counts()
    left = [n for n in shm_names if os.path.exists('/dev/shm/' + n.lstrip('/'))]
    print(json.dumps({'before': before, 'after': after, 'shm_left': left,
                      'kinds': sorted(KINDS)}))
'''

KINDS = ['Pipe', 'Pipe(duplex=False)', 'Queue', 'JoinableQueue', 'SimpleQueue', 'Lock',
         'RLock', 'Semaphore', 'BoundedSemaphore', 'Condition', 'Event', 'Barrier', 'Value',
         'Array', 'RawValue', 'RawArray', 'SharedMemory', 'ShareableList', 'Manager',
         'Pool(2)', 'Listener/Client']


@pytest.mark.parametrize('kind', KINDS)
def test_create_close_loop_leaks_nothing(kind):
    r = run(SNIPPET, 'cmp', args=[kind, str(ROUNDS)], timeout=100)
    assert r.returncode == 0 and not r.timed_out, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out['kinds'] == sorted(KINDS)
    assert out['after'] == out['before'], (kind, out)
    assert out['shm_left'] == []
