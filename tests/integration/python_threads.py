"""Allocation-heavy threaded workload for the python3 integration test.

Producer threads build dicts, lists and strings and hand them through a queue
to consumer threads, which check and drop them: blocks are allocated on one
thread and freed on another. Every result is deterministic, so the printed
digest must equal a run under the system malloc.
"""
import ctypes
import hashlib
import os
import queue
import threading

PRODUCERS, CONSUMERS, ITEMS = 4, 4, 10000


def build(tid, i):
    # A mix of small and large objects: dict nodes, list buffers, strings.
    words = ["w%d-%d-%s" % (tid, i, "x" * (i % 97)) for _ in range(8)]
    return {
        "id": (tid, i),
        "words": words,
        "text": "|".join(words) * (1 + i % 5),
        "nums": list(range(i % 300)),
        "nested": {str(k): [k] * (k % 7) for k in range(i % 40)},
    }


def digest_of(obj):
    h = hashlib.sha256()
    h.update(repr((obj["id"], len(obj["text"]), sum(obj["nums"]), len(obj["nested"]))).encode())
    h.update(obj["text"].encode())
    return h.hexdigest()


def main():
    q = queue.Queue(maxsize=256)
    results = {}
    lock = threading.Lock()

    def producer(tid):
        for i in range(ITEMS):
            q.put(build(tid, i))

    def consumer():
        local = {}
        while True:
            obj = q.get()
            if obj is None:
                break
            local[obj["id"]] = digest_of(obj)  # obj freed here, on this thread
        with lock:
            results.update(local)

    cons = [threading.Thread(target=consumer) for _ in range(CONSUMERS)]
    prods = [threading.Thread(target=producer, args=(t,)) for t in range(PRODUCERS)]
    for t in cons + prods:
        t.start()
    for t in prods:
        t.join()
    for _ in cons:
        q.put(None)
    for t in cons:
        t.join()

    assert len(results) == PRODUCERS * ITEMS, len(results)
    # Recompute on one thread: the threaded results must match exactly.
    for (tid, i), d in results.items():
        if i % 50 == 0:
            assert d == digest_of(build(tid, i)), (tid, i)

    total = hashlib.sha256("".join(results[k] for k in sorted(results)).encode())

    # Under LD_PRELOAD, a large object (past pymalloc's 512-byte limit, so it
    # comes from malloc) must live in amalloc memory.
    if os.environ.get("LD_PRELOAD"):
        am_owns = ctypes.CDLL(None).am_owns
        am_owns.argtypes = [ctypes.c_void_p]
        big = bytes(1 << 20)
        assert am_owns(id(big)) == 1, "a 1 MiB bytes object is not amalloc memory"
        print("am_owns(large object) = 1")

    print("items %d digest %s" % (len(results), total.hexdigest()))


if __name__ == "__main__":
    main()
