// Alignment of every result, for every power-of-two alignment up to 2 MiB
// and sizes below, at and above the alignment.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include "amalloc_test_support.h"

namespace {

enum class Fn { memalign, aligned_alloc, posix_memalign };

const char* name(Fn f) {
  switch (f) {
    case Fn::memalign:
      return "am_memalign";
    case Fn::aligned_alloc:
      return "am_aligned_alloc";
    case Fn::posix_memalign:
      return "am_posix_memalign";
  }
  return "?";
}

void* alloc_aligned(Fn f, std::size_t a, std::size_t n) {
  switch (f) {
    case Fn::memalign:
      return am_memalign(a, n);
    case Fn::aligned_alloc:
      return am_aligned_alloc(a, n);
    case Fn::posix_memalign: {
      void* p = nullptr;
      return am_posix_memalign(&p, a, n) == 0 ? p : nullptr;
    }
  }
  return nullptr;
}

std::vector<std::size_t> sizes_for(std::size_t a) {
  std::set<std::size_t> s = {1, 8, 16, 100, a / 2, a - 1, a, a + 1, a + 16, 2 * a + 16, 3 * a};
  s.erase(0);
  return {s.begin(), s.end()};
}

TEST(Alignment, SweepAllPowersOfTwoUpTo2MiB) {
  const int live = 6;  // several live blocks at once: alignment must not be luck
  for (Fn f : {Fn::memalign, Fn::aligned_alloc, Fn::posix_memalign}) {
    for (std::size_t a = 1; a <= (std::size_t{2} << 20); a *= 2) {
      if (f == Fn::posix_memalign && a < sizeof(void*)) continue;
      for (std::size_t n : sizes_for(a)) {
        void* blocks[live];
        for (int i = 0; i < live; ++i) {
          void* p = alloc_aligned(f, a, n);
          ASSERT_NE(p, nullptr) << name(f) << "(" << a << ", " << n << ")";
          ASSERT_TRUE(amt::is_aligned(p, std::max<std::size_t>(a, 16)))
              << name(f) << "(" << a << ", " << n << ") = " << p;
          ASSERT_GE(am_usable_size(p), n) << name(f) << "(" << a << ", " << n << ")";
          ASSERT_EQ(am_owns(p), 1);
          amt::fill_pattern(p, n, a * 131 + n * 7 + static_cast<std::size_t>(i));
          blocks[i] = p;
        }
        for (int i = 0; i < live; ++i) {
          ASSERT_EQ(amt::check_pattern(blocks[i], n, a * 131 + n * 7 + static_cast<std::size_t>(i)),
                    SIZE_MAX)
              << "overlapping aligned blocks: " << name(f) << "(" << a << ", " << n << ")";
          am_free(blocks[i]);
        }
      }
    }
  }
}

TEST(Alignment, HugeAlignmentsFrom4MiBTo64MiB) {
  // Alignments of a segment (4 MiB) and more, small and huge sizes.
  for (Fn f : {Fn::memalign, Fn::aligned_alloc, Fn::posix_memalign}) {
    for (std::size_t a = std::size_t{4} << 20; a <= (std::size_t{64} << 20); a *= 4) {
      for (std::size_t n : {16ul, 100000ul, a + 1}) {
        void* p = alloc_aligned(f, a, n);
        ASSERT_NE(p, nullptr) << name(f) << "(" << a << ", " << n << ")";
        EXPECT_TRUE(amt::is_aligned(p, a)) << name(f) << "(" << a << ", " << n << ") = " << p;
        EXPECT_EQ(am_owns(p), 1) << name(f) << "(" << a << ", " << n << ") = " << p;
        EXPECT_GE(am_usable_size(p), n) << name(f) << "(" << a << ", " << n << ") = " << p;
        std::memset(p, 0x3C, n);
        void* q = am_realloc(p, n + 5000);  // moves or grows; contents follow
        ASSERT_NE(q, nullptr);
        EXPECT_EQ(amt::check_bytes(q, n, 0x3C), SIZE_MAX);
        am_free(q);
      }
    }
  }
}

TEST(Alignment, MallocFamilyIsSixteenByteAligned) {
  amt::Rng rng(7);
  std::vector<void*> v;
  for (int i = 0; i < 20000; ++i) {
    std::size_t n = rng.chance(90) ? rng.range(0, 512) : rng.range(0, 200000);
    void* p = nullptr;
    switch (i % 4) {
      case 0:
        p = am_malloc(n);
        break;
      case 1:
        p = am_calloc(1, n);
        break;
      case 2:
        p = am_realloc(nullptr, n);
        break;
      case 3:
        p = am_reallocarray(nullptr, n, 1);
        break;
    }
    ASSERT_NE(p, nullptr);
    ASSERT_TRUE(amt::is_aligned(p, 16)) << p << " n=" << n;
    v.push_back(p);
    if (v.size() > 500) {
      std::size_t k = rng.below(v.size());
      void* q = am_realloc(v[k], rng.range(1, 3000));
      ASSERT_NE(q, nullptr);
      ASSERT_TRUE(amt::is_aligned(q, 16)) << q;
      v[k] = v.back();
      v.pop_back();
      am_free(q);
    }
  }
  for (void* p : v) am_free(p);
}

TEST(Alignment, ManySmallAlignedBlocksDoNotOverlap) {
  for (std::size_t a : {32ul, 64ul, 128ul, 256ul, 512ul, 4096ul}) {
    for (std::size_t n : {8ul, 24ul, a - 8, a + 8}) {
      std::vector<void*> v;
      std::set<void*> seen;
      const int count = a >= 4096 ? 100 : 1000;
      for (int i = 0; i < count; ++i) {
        void* p = am_memalign(a, n);
        ASSERT_NE(p, nullptr);
        ASSERT_TRUE(amt::is_aligned(p, a)) << p << " align " << a;
        ASSERT_TRUE(seen.insert(p).second);
        amt::fill_pattern(p, n, static_cast<std::uint64_t>(i) * 1000 + a + n);
        v.push_back(p);
      }
      for (int i = 0; i < count; ++i) {
        ASSERT_EQ(amt::check_pattern(v[static_cast<std::size_t>(i)], n,
                                     static_cast<std::uint64_t>(i) * 1000 + a + n),
                  SIZE_MAX)
            << "align " << a << " size " << n << " block " << i;
        am_free(v[static_cast<std::size_t>(i)]);
      }
    }
  }
}

TEST(Alignment, ReallocOfAlignedBlockKeepsContents) {
  for (std::size_t a : {64ul, 4096ul, 1ul << 20}) {
    void* p = am_aligned_alloc(a, 300);
    ASSERT_NE(p, nullptr);
    amt::fill_pattern(p, 300, a);
    p = am_realloc(p, 100000);
    ASSERT_NE(p, nullptr);
    ASSERT_EQ(amt::check_pattern(p, 300, a), SIZE_MAX);
    p = am_realloc(p, 20);
    ASSERT_NE(p, nullptr);
    ASSERT_EQ(amt::check_pattern(p, 20, a), SIZE_MAX);
    am_free(p);
  }
}

TEST(Alignment, AlignedUsableSizeIsWritable) {
  for (std::size_t a : {16ul, 64ul, 4096ul, 65536ul}) {
    for (std::size_t n : {1ul, a, 3 * a + 5}) {
      void* p = am_memalign(a, n);
      ASSERT_NE(p, nullptr);
      std::size_t u = am_usable_size(p);
      ASSERT_GE(u, n);
      std::memset(p, 0xAB, u);
      void* q = am_malloc(64);  // a neighbour must not be hurt
      ASSERT_NE(q, nullptr);
      std::memset(q, 0x11, 64);
      EXPECT_EQ(amt::check_bytes(p, u, 0xAB), SIZE_MAX);
      am_free(q);
      am_free(p);
    }
  }
}

}  // namespace
