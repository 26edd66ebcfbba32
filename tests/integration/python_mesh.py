# Fragments the heap with blocks that CPython takes from malloc (bytes over
# 512 bytes), keeps a random tenth, forks, and prints checksums of what it
# kept: in the child, and in the parent after writing into the kept blocks
# while the child ran. Deterministic: the output must match a run under
# the system malloc.
import hashlib
import os
import random
import sys

rng = random.Random(7)
blocks = []
for i in range(60000):
    n = rng.choice((rng.randrange(600, 3000), rng.randrange(9000, 15000)))
    blocks.append(bytearray(rng.getrandbits(8) for _ in range(16)) * (n // 16))
kept = [b for b in blocks if rng.randrange(10) == 0]
del blocks
# Other sizes, while the sparse pages wait to be meshed.
more = [bytes([i % 251]) * (4000 + i % 3000) for i in range(8000)]


def digest(objs):
    h = hashlib.sha256()
    for o in objs:
        h.update(o)
    return h.hexdigest()


print("kept", len(kept), digest(kept))
sys.stdout.flush()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)  # the parent has overwritten its copy by now
    print("child", digest(kept), digest(more))
    sys.stdout.flush()
    os._exit(0)
os.close(r)
for b in kept:
    b[0] ^= 0xFF
os.write(w, b"x")
os.waitpid(pid, 0)
print("parent", digest(kept), digest(more))
