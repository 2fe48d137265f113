"""What several workloads share (not a workload file: the harness loads
bench_*.py only)."""
import time


def race(mp, target, args, nprocs=2):
    """Start nprocs processes running target(*args, go, done), let them go
    at once, and return the seconds until every one has released done."""
    go, done = mp.Event(), mp.Semaphore(0)
    procs = [mp.Process(target=target, args=tuple(args) + (go, done))
             for _ in range(nprocs)]
    for p in procs:
        p.start()
    time.sleep(0.05)                    # all of them up and waiting on go
    t0 = time.perf_counter()
    go.set()
    for _ in procs:
        done.acquire()
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    return elapsed
