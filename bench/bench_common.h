// Shared by the benchmark programs: a seeded generator, the small-size mix
// and the thread count, so every program draws the same kind of requests.
#pragma once
#include <cstdint>
#include <thread>

namespace bench {

inline void keep(void* p) { asm volatile("" : : "r"(p) : "memory"); }

// splitmix64: small, fast, good enough for choosing sizes and slots.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint32_t below(uint32_t n) { return uint32_t((next() >> 32) * n >> 32); }
};

// 16..512 bytes, weighted to small: 50% 16-64, 30% 65-128, 15% 129-256,
// 5% 257-512.
inline uint32_t small_size(Rng& r) {
  uint32_t b = r.below(100);
  if (b < 50) return 16 + r.below(49);
  if (b < 80) return 65 + r.below(64);
  if (b < 95) return 129 + r.below(128);
  return 257 + r.below(256);
}

inline unsigned hw_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : n;
}

}  // namespace bench
