// am_realloc keeps contents across every size-class boundary (grow and
// shrink, small -> large -> huge -> small); am_calloc zeroes recycled memory.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "amalloc_test_support.h"

namespace {

// Every class boundary b (b-1, b, b+1) from 16 bytes to 64 KiB, then large
// and huge sizes.
std::vector<std::size_t> boundary_sizes() {
  std::set<std::size_t> s;
  for (std::size_t b = 16; b <= 128; b += 16) s.insert({b - 1, b, b + 1});
  for (std::size_t p = 128; p < 65536; p *= 2)
    for (std::size_t k = 1; k <= 8; ++k) {
      std::size_t b = p + p / 8 * k;
      s.insert({b - 1, b, b + 1});
    }
  for (std::size_t n : {65536ul + 4096, 100000ul, 131072ul, 262144ul + 1, 1ul << 20,
                        (1ul << 20) + 4097, (4ul << 20) - 4096, (4ul << 20) - 1, 4ul << 20,
                        (4ul << 20) + 1, 5ul << 20, 8ul << 20, (16ul << 20) + 3, 33ul << 20})
    s.insert(n);
  return {s.begin(), s.end()};
}

void* realloc_checked(void* p, std::size_t old_n, std::size_t new_n, std::uint64_t seed) {
  void* q = am_realloc(p, new_n);
  EXPECT_NE(q, nullptr) << old_n << " -> " << new_n;
  if (!q) return p;
  EXPECT_TRUE(amt::is_aligned(q, 16));
  EXPECT_GE(am_usable_size(q), new_n);
  std::size_t keep = old_n < new_n ? old_n : new_n;
  std::size_t bad = amt::check_pattern(q, keep, seed);
  EXPECT_EQ(bad, SIZE_MAX) << "realloc " << old_n << " -> " << new_n << " lost byte " << bad;
  amt::fill_pattern(q, new_n, seed);
  return q;
}

TEST(Realloc, GrowThroughEveryBoundary) {
  const std::uint64_t seed = 1;
  std::size_t n = 1;
  void* p = am_malloc(n);
  ASSERT_NE(p, nullptr);
  amt::fill_pattern(p, n, seed);
  for (std::size_t m : boundary_sizes()) {
    p = realloc_checked(p, n, m, seed);
    n = m;
    if (HasFailure()) break;
  }
  am_free(p);
}

TEST(Realloc, ShrinkThroughEveryBoundary) {
  const std::uint64_t seed = 2;
  auto sizes = boundary_sizes();
  std::size_t n = sizes.back();
  void* p = am_malloc(n);
  ASSERT_NE(p, nullptr);
  amt::fill_pattern(p, n, seed);
  for (auto it = sizes.rbegin(); it != sizes.rend(); ++it) {
    p = realloc_checked(p, n, *it, seed);
    n = *it;
    if (HasFailure()) break;
  }
  p = realloc_checked(p, n, 1, seed);
  am_free(p);
}

TEST(Realloc, JumpsBetweenSmallLargeAndHuge) {
  const std::size_t jumps[] = {100,       200000, 10u << 20, 50,       10u << 20, 100000,
                               16,        70000,  5u << 20,  4096,     1u << 20,  24,
                               64u << 20, 128,    3000,      9u << 20, 1};
  for (std::uint64_t seed = 10; seed < 13; ++seed) {
    std::size_t n = 1;
    void* p = am_malloc(n);
    ASSERT_NE(p, nullptr);
    amt::fill_pattern(p, n, seed);
    for (std::size_t m : jumps) {
      p = realloc_checked(p, n, m, seed);
      n = m;
      ASSERT_FALSE(HasFailure());
    }
    am_free(p);
  }
}

TEST(Realloc, HugeGrowAndShrinkInSteps) {
  // Huge blocks grow by mremap: contents must follow.
  const std::uint64_t seed = 20;
  std::size_t n = 5u << 20;
  void* p = am_malloc(n);
  ASSERT_NE(p, nullptr);
  amt::fill_pattern(p, n, seed);
  for (std::size_t m : {6ul << 20, (6ul << 20) + 1, 8ul << 20, 16ul << 20, 48ul << 20, 47ul << 20,
                        20ul << 20, (5ul << 20) - 7, 5ul << 20}) {
    p = realloc_checked(p, n, m, seed);
    n = m;
    ASSERT_FALSE(HasFailure());
  }
  am_free(p);
}

TEST(Realloc, RandomWalkWithNeighbours) {
  // Many live blocks, each realloc'd at random: a realloc must never hurt a
  // neighbour.
  amt::Rng rng(99);
  const std::size_t slots = 64;
  std::vector<void*> p(slots, nullptr);
  std::vector<std::size_t> n(slots, 0);
  const std::size_t steps = amt::scaled(20000, 2000);
  for (std::size_t step = 0; step < steps; ++step) {
    std::size_t i = rng.below(slots);
    // Log-uniform sizes from 1 byte to 8 MiB, mostly small.
    std::size_t m;
    unsigned r = static_cast<unsigned>(rng.below(100));
    if (r < 70)
      m = rng.range(1, 1024);
    else if (r < 95)
      m = rng.range(1025, 65536 + 8192);
    else if (r < 99)
      m = rng.range(65537, 1u << 20);
    else
      m = rng.range(1u << 20, 8u << 20);
    if (!p[i]) {
      p[i] = am_malloc(m);
      ASSERT_NE(p[i], nullptr);
      amt::fill_pattern(p[i], m, i);
      n[i] = m;
    } else if (rng.chance(10)) {
      ASSERT_EQ(amt::check_pattern(p[i], n[i], i), SIZE_MAX) << "slot " << i << " step " << step;
      am_free(p[i]);
      p[i] = nullptr;
    } else {
      p[i] = realloc_checked(p[i], n[i], m, i);
      n[i] = m;
      ASSERT_FALSE(HasFailure()) << "step " << step;
    }
  }
  for (std::size_t i = 0; i < slots; ++i) {
    if (!p[i]) continue;
    ASSERT_EQ(amt::check_pattern(p[i], n[i], i), SIZE_MAX) << "slot " << i;
    am_free(p[i]);
  }
}

// ---- calloc --------------------------------------------------------------------

const std::size_t kCallocSizes[] = {
    1,        16,      24,    64,    100,   128,    129,      1000,
    4096,     10000,   32768, 65536, 65537, 100000, 1u << 20, (4u << 20) - 1,
    5u << 20, 9u << 20};

TEST(Calloc, ZeroesRecycledMemoryOneAtATime) {
  for (std::size_t n : kCallocSizes) {
    const int rounds = n > (1u << 20) ? 10 : 50;
    for (int r = 0; r < rounds; ++r) {
      void* p = am_malloc(n);
      ASSERT_NE(p, nullptr);
      std::memset(p, 0xFF, am_usable_size(p));
      am_free(p);
      void* q = am_calloc(1, n);
      ASSERT_NE(q, nullptr);
      std::size_t bad = amt::check_bytes(q, n, 0);
      ASSERT_EQ(bad, SIZE_MAX) << "calloc(1, " << n << ") byte " << bad << " not zero (round " << r
                               << ")";
      std::memset(q, 0xFF, am_usable_size(q));
      am_free(q);
    }
  }
}

TEST(Calloc, ZeroesRecycledMemoryInBatches) {
  for (std::size_t n : kCallocSizes) {
    const std::size_t count = n >= (1u << 20) ? 4 : n >= 65536 ? 40 : 400;
    std::vector<void*> v;
    for (std::size_t i = 0; i < count; ++i) {
      void* p = am_malloc(n);
      ASSERT_NE(p, nullptr);
      std::memset(p, 0xFF, am_usable_size(p));
      v.push_back(p);
    }
    for (void* p : v) am_free(p);
    v.clear();
    for (std::size_t i = 0; i < count; ++i) {
      // calloc(count, size) spelled both ways.
      void* q = (i % 2) ? am_calloc(n, 1) : am_calloc(1, n);
      ASSERT_NE(q, nullptr);
      std::size_t bad = amt::check_bytes(q, n, 0);
      ASSERT_EQ(bad, SIZE_MAX) << "calloc of " << n << " bytes, block " << i << ": byte " << bad
                               << " not zero";
      v.push_back(q);
    }
    for (void* q : v) am_free(q);
  }
}

TEST(Calloc, ZeroesAfterHugeBlockShrunkByRealloc) {
  // A huge block shrunk to less than half keeps its first mapping; the old
  // contents beyond the new size must not come back through calloc once the
  // mapping is reused.
  for (std::size_t big : {8ul << 20, 6ul << 20, 20ul << 20}) {
    for (std::size_t small : {1ul << 20, 100000ul, 2ul << 20}) {
      for (std::size_t n : {3ul << 20, (4ul << 20) - 100000, 2ul << 20, 200000ul}) {
        void* p = am_malloc(big);
        ASSERT_NE(p, nullptr);
        std::memset(p, 0xFF, big);
        p = am_realloc(p, small);
        ASSERT_NE(p, nullptr);
        am_free(p);
        void* q = am_calloc(1, n);
        ASSERT_NE(q, nullptr);
        std::size_t bad = amt::check_bytes(q, n, 0);
        EXPECT_EQ(bad, SIZE_MAX) << "malloc(" << big << "), fill, realloc to " << small
                                 << ", free, calloc(1, " << n << "): byte " << bad << " not zero";
        am_free(q);
        if (HasFailure()) return;
      }
    }
  }
}

TEST(Calloc, ZeroesAfterReallocAndAlignedUse) {
  // Dirty memory left behind by realloc and by aligned blocks.
  for (int r = 0; r < 20; ++r) {
    void* p = am_malloc(5000);
    ASSERT_NE(p, nullptr);
    std::memset(p, 0xFF, 5000);
    p = am_realloc(p, 200);
    ASSERT_NE(p, nullptr);
    void* a = am_memalign(4096, 8000);
    ASSERT_NE(a, nullptr);
    std::memset(a, 0xFF, 8000);
    am_free(a);
    am_free(p);
    for (std::size_t n : {200ul, 5000ul, 8000ul, 4096ul}) {
      void* q = am_calloc(n / 8, 8);
      ASSERT_NE(q, nullptr);
      ASSERT_EQ(amt::check_bytes(q, n, 0), SIZE_MAX) << n;
      std::memset(q, 0xEE, n);
      am_free(q);
    }
  }
}

}  // namespace

// A buffer realloc'ed to each new length in small steps (as C code appends)
// gets room for 1/8 more when it moves, so it moves at about every other
// class, not at each of the 48 classes from 1 KiB to 64 KiB.
TEST(Realloc, SmallStepsMoveAtAboutEveryOtherClass) {
  const std::uint64_t seed = 9;
  std::size_t n = 1000;
  void* p = am_malloc(n);
  ASSERT_NE(p, nullptr);
  amt::fill_pattern(p, n, seed);
  std::size_t moves = 0;
  while (n + 50 <= 60000) {
    void* q = am_realloc(p, n + 50);
    ASSERT_NE(q, nullptr);
    moves += q != p;
    p = q;
    n += 50;
    amt::fill_pattern(p, n, seed);
  }
  EXPECT_EQ(amt::check_pattern(p, n, seed), SIZE_MAX);
  EXPECT_GE(moves, 15u);
  EXPECT_LE(moves, 32u) << "moves: " << moves;
  am_free(p);
}

// The room for 1/8 more is a bonus: when it cannot be had, realloc takes
// the size asked, and errno stays as it was. 7000 -> 8192 bytes would move
// into the first medium class (9216), whose pages need a medium segment;
// under an address-space limit at the process's current size, none can be
// mapped, while the 8192-byte class has a page with free blocks.
AMT_SCENARIO(realloc_room_falls_back) {
  void* keep = am_malloc(8192);  // the exact class's page, 7 blocks free
  auto* p = static_cast<unsigned char*>(am_malloc(7000));
  if (!keep || !p) return 2;
  amt::fill_pattern(p, 7000, 5);
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (!f || std::fscanf(f, "%lu", &pages) != 1) return 3;
  std::fclose(f);
  rlimit rl{};
  getrlimit(RLIMIT_AS, &rl);
  rl.rlim_cur = pages * amt::page_size();
  if (setrlimit(RLIMIT_AS, &rl) != 0) return 4;
  void* probe = am_malloc(9216);
  std::printf("PROBE %d\n", probe != nullptr);  // 1: a medium page was at hand
  errno = 0;
  void* q = am_realloc(p, 8192);
  std::printf("MOVED %d\n", q != nullptr && q != p);
  std::printf("ERRNO %d\n", errno);
  std::printf("USABLE %zu\n", q ? am_usable_size(q) : 0);
  std::printf("BAD %d\n", q ? amt::check_pattern(q, 7000, 5) != SIZE_MAX : 1);
  return 0;
}

TEST(Realloc, RoomForMoreIsDroppedWhenItCannotBeHad) {
  if (AMT_SANITIZED)
    GTEST_SKIP() << "the sanitizers map shadow memory past any address-space limit";
  auto r = amt::run_scenario("realloc_room_falls_back", {});
  ASSERT_TRUE(r.exited_ok()) << r.describe();
  if (amt::value_of(r.out, "PROBE") != 0)
    GTEST_SKIP() << "a medium page was at hand\n" << r.describe();
  EXPECT_EQ(amt::value_of(r.out, "MOVED"), 1) << r.describe();
  EXPECT_EQ(amt::value_of(r.out, "ERRNO"), 0) << r.describe();
  EXPECT_EQ(amt::value_of(r.out, "USABLE"), 8192) << r.describe();
  EXPECT_EQ(amt::value_of(r.out, "BAD"), 0) << r.describe();
}
