#!/usr/bin/env python3
"""Writes the seed corpus of amalloc_fuzz into corpus/ (deterministic).

Each operation is 5 bytes: opcode, slot, two size bytes, one extra byte;
see amalloc_fuzz.cpp for the encoding.
"""
import os
import random

OPS = dict(malloc=0, calloc=1, realloc=2, memalign=3, posix_memalign=4, aligned_alloc=5,
           free=6, check=7, reallocarray=8, free_sized=9, valloc=10, owns=11)


def small(n):  # 0..1024
    return [n >> 8, n & 255]


def medium(v):  # v*4 + (v&3), up to 64 KiB
    return [0x40 | (v >> 8), v & 255]


def large(v):  # 65536 + v*64
    return [0x80 | (v >> 8), v & 255]


def huge(v):  # 4..8 MiB for v >= 48, impossible sizes for v < 48
    return [0xC0 | (v >> 8), v & 255]


def op(name, slot, size, extra=0):
    return bytes([OPS[name], slot] + size + [extra])


def write(name, ops):
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(here, "corpus"), exist_ok=True)
    with open(os.path.join(here, "corpus", name), "wb") as f:
        f.write(b"".join(ops))


write("small_classes", [op("malloc", i, small(i * 16 + i % 3)) for i in range(64)] +
      [op("free", i, small(0)) for i in range(0, 64, 2)] +
      [op("malloc", i, small(1024 - i)) for i in range(0, 64, 2)])
write("realloc_chain", [op("malloc", 1, small(10))] +
      [op("realloc", 1, s) for s in (small(100), small(129), medium(300), medium(16000), large(100),
                                      huge(100), large(5), medium(2), small(17), small(0))])
write("aligned", [op(f, i, small(100 + i), i % 22)
                  for i, f in enumerate(["memalign", "posix_memalign", "aligned_alloc"] * 8)] +
      [op("memalign", 30, small(8), 0x80 | 6), op("aligned_alloc", 31, small(8), 0xFF),
       op("posix_memalign", 32, small(8), 1), op("posix_memalign", 33, medium(5000), 21)])
write("calloc_array", [op("calloc", i, medium(i * 40), i) for i in range(16)] +
      [op("reallocarray", i, medium(i * 90), i) for i in range(16)] +
      [op("free_sized", i, small(0)) for i in range(16)])
write("impossible", [op("malloc", 0, huge(v)) for v in range(6)] +
      [op("malloc", 5, small(64)), op("realloc", 5, huge(1)), op("reallocarray", 5, huge(2), 3),
       op("calloc", 6, huge(0), 2), op("memalign", 7, huge(3), 4), op("posix_memalign", 8, huge(4), 5),
       op("valloc", 9, huge(1), 0), op("valloc", 9, huge(0), 1), op("check", 5, small(0))])
write("owns_garbage", [op("malloc", 3, small(50))] +
      [bytes([OPS["owns"], random.Random(i).randrange(256), i, 255 - i, i & 0xFE | (i % 2)])
       for i in range(40)])
write("huge_and_valloc", [op("malloc", 0, huge(60)), op("valloc", 1, medium(1000), 0),
                          op("valloc", 2, medium(1000), 1), op("realloc", 0, huge(4000)),
                          op("realloc", 0, small(3)), op("free", 1, small(0))])
# A huge block shrunk by realloc to less than half, freed, then calloc of a
# size that reuses its mapping: the old tail must not show through.
write("huge_shrink_calloc", [op("malloc", 0, huge(2000)), op("realloc", 0, large(500)), op("free", 0, small(0)),
                             op("calloc", 1, large(15000), 0), op("check", 1, small(0))])
rng = random.Random(2024)
write("random_mix", [bytes([rng.randrange(12), rng.randrange(64), rng.choice([0, 1, 2, 0x41, 0x80]),
                            rng.randrange(256), rng.randrange(256)]) for _ in range(300)])
