// Shared by the stress tests: a live block with the seed of its pattern,
// and allocation / check / free helpers that abort (with a message) on any
// corruption, so they can run in worker threads and forked children.
#ifndef AMALLOC_TESTS_STRESS_STRESS_COMMON_H
#define AMALLOC_TESTS_STRESS_STRESS_COMMON_H

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "amalloc_test_support.h"

namespace stress {

struct Rec {
  void* p = nullptr;
  std::size_t n = 0;
  std::uint64_t seed = 0;
  std::size_t align = 16;
};

// Sizes: mostly small, some medium (up to 64 KiB), a few large (up to 1 MiB).
inline std::size_t pick_size(amt::Rng& rng) {
  unsigned r = static_cast<unsigned>(rng.below(1000));
  if (r < 500) return rng.range(0, 128);
  if (r < 850) return rng.range(129, 1024);
  if (r < 985) return rng.range(1025, 65536);
  return rng.range(65537, 1u << 20);
}

[[noreturn]] inline void die(const char* what, const Rec& r, std::size_t at) {
  std::fprintf(stderr, "stress: %s: block %p size %zu seed %llx: byte %zu differs\n", what, r.p,
               r.n, static_cast<unsigned long long>(r.seed), at);
  std::abort();
}

inline void verify(const Rec& r, const char* what) {
  if (!amt::is_aligned(r.p, r.align)) die("misaligned block", r, 0);
  if (am_usable_size(r.p) < r.n) die("usable size below request", r, 0);
  std::size_t bad = amt::check_pattern(r.p, r.n, r.seed);
  if (bad != SIZE_MAX) die(what, r, bad);
}

// One allocation by any function of the family.
inline Rec allocate(amt::Rng& rng, std::uint64_t seed) {
  Rec r;
  r.n = pick_size(rng);
  r.seed = seed;
  unsigned how = static_cast<unsigned>(rng.below(100));
  if (how < 80) {
    r.p = am_malloc(r.n);
  } else if (how < 88) {
    r.p = am_calloc(1, r.n);
    if (r.p && amt::check_bytes(r.p, r.n, 0) != SIZE_MAX)
      die("calloc block not zero", r, amt::check_bytes(r.p, r.n, 0));
  } else if (how < 94) {
    r.align = std::size_t{1} << rng.range(4, 12);
    r.p = am_memalign(r.align, r.n);
  } else if (how < 97) {
    r.align = std::size_t{1} << rng.range(3, 13);
    if (am_posix_memalign(&r.p, r.align, r.n) != 0) r.p = nullptr;
    if (r.align < 16) r.align = 16;
  } else {
    r.align = std::size_t{1} << rng.range(4, 16);
    r.p = am_aligned_alloc(r.align, r.n);
  }
  if (!r.p) {
    std::fprintf(stderr, "stress: allocation of %zu bytes (align %zu) failed: errno %d\n", r.n,
                 r.align, errno);
    std::abort();
  }
  amt::fill_pattern(r.p, r.n, r.seed);
  return r;
}

inline void release(const Rec& r, amt::Rng& rng) {
  verify(r, "corrupted before free");
  if (rng.chance(20))
    am_free_sized(r.p, r.n);
  else
    am_free(r.p);
}

inline void reallocate(Rec& r, amt::Rng& rng, std::uint64_t new_seed) {
  verify(r, "corrupted before realloc");
  std::size_t m = pick_size(rng);
  void* q = am_realloc(r.p, m);
  if (!q && m != 0) {
    std::fprintf(stderr, "stress: realloc to %zu failed\n", m);
    std::abort();
  }
  if (m == 0) {  // realloc(p, 0) frees p
    if (q) am_free(q);
    q = am_malloc(0);
  }
  Rec moved = r;
  moved.p = q;
  moved.n = std::min(r.n, m);
  moved.align = 16;
  verify(moved, "realloc lost contents");
  r.p = q;
  r.n = m;
  r.align = 16;
  r.seed = new_seed;
  amt::fill_pattern(r.p, r.n, r.seed);
}

}  // namespace stress

#endif
