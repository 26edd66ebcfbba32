// Size classes, seen through the public API: am_usable_size(am_malloc(n)).
//
// Contract: 16-byte steps up to 128; then 8 classes per power of two up to
// 64 KiB (so at most 12.5% of a block is waste above 128 bytes); larger
// blocks are page-rounded; every block is 16-byte aligned.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

#include "amalloc_test_support.h"

namespace {

// Every n in 1..4096, then a coarser step up to 70000, plus the edges of
// every power of two and of 64 KiB.
std::vector<std::size_t> sweep_sizes() {
  std::set<std::size_t> s;
  for (std::size_t n = 1; n <= 4096; ++n) s.insert(n);
  for (std::size_t n = 4096; n <= 70000; n += 7) s.insert(n);
  for (std::size_t p = 8; p <= 65536 * 2; p *= 2) {
    for (std::size_t d = 0; d <= 2; ++d) {
      s.insert(p - d);
      s.insert(p + d);
    }
    // Each eighth of the next power of two, +-1.
    for (std::size_t k = 1; k < 8; ++k) {
      std::size_t edge = p + p / 8 * k;
      s.insert(edge - 1);
      s.insert(edge);
      s.insert(edge + 1);
    }
  }
  s.erase(0);
  return {s.begin(), s.end()};
}

struct Sample {
  std::size_t n;
  std::size_t usable;
};

std::vector<Sample> measure() {
  std::vector<Sample> out;
  for (std::size_t n : sweep_sizes()) {
    void* p = am_malloc(n);
    if (!p) {
      ADD_FAILURE() << "am_malloc(" << n << ") returned NULL";
      continue;
    }
    EXPECT_TRUE(amt::is_aligned(p, 16)) << "n=" << n << " p=" << p;
    std::size_t u = am_usable_size(p);
    // The whole usable size must be writable.
    static_cast<unsigned char*>(p)[0] = 1;
    static_cast<unsigned char*>(p)[u - 1] = 2;
    out.push_back({n, u});
    am_free(p);
  }
  return out;
}

TEST(SizeClass, UsableSizeCoversRequestAndIsMonotonic) {
  auto samples = measure();
  ASSERT_FALSE(samples.empty());
  std::size_t prev_usable = 0, prev_n = 0;
  int failures = 0;
  for (const Sample& s : samples) {
    if (s.usable < s.n) {
      ADD_FAILURE() << "am_usable_size(am_malloc(" << s.n << ")) = " << s.usable << " < request";
      if (++failures > 20) return;
    }
    if (s.usable < prev_usable) {
      ADD_FAILURE() << "usable size not monotonic: n=" << prev_n << " -> " << prev_usable
                    << ", n=" << s.n << " -> " << s.usable;
      if (++failures > 20) return;
    }
    prev_usable = s.usable;
    prev_n = s.n;
  }
}

TEST(SizeClass, SixteenByteStepsUpTo128) {
  for (std::size_t n = 1; n <= 128; ++n) {
    void* p = am_malloc(n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(am_usable_size(p), amt::round_up(n, 16)) << "n=" << n;
    am_free(p);
  }
}

TEST(SizeClass, WasteAtMostOneEighthAbove128) {
  int failures = 0;
  for (const Sample& s : measure()) {
    if (s.n <= 128) continue;
    double waste = static_cast<double>(s.usable - s.n) / static_cast<double>(s.usable);
    if (waste > 0.125) {
      ADD_FAILURE() << "n=" << s.n << " usable=" << s.usable << " waste=" << waste * 100
                    << "% > 12.5%";
      if (++failures > 20) return;
    }
  }
}

TEST(SizeClass, UsableSizesAreMultiplesOf16) {
  int failures = 0;
  for (const Sample& s : measure()) {
    if (s.usable % 16 != 0) {
      ADD_FAILURE() << "n=" << s.n << " usable=" << s.usable << " is not a multiple of 16";
      if (++failures > 20) return;
    }
  }
}

TEST(SizeClass, AtMostEightClassesPerPowerOfTwoUpTo64K) {
  // Distinct usable sizes seen for requests in (2^k, 2^(k+1)].
  std::map<std::size_t, std::set<std::size_t>> classes;
  for (const Sample& s : measure()) {
    if (s.n <= 128 || s.n > 65536) continue;
    std::size_t p = 128;
    while (p * 2 < s.n) p *= 2;
    classes[p].insert(s.usable);
  }
  EXPECT_EQ(classes.size(), 9u);  // (128,256] ... (32K,64K]
  for (auto& [p, set] : classes) {
    EXPECT_LE(set.size(), 8u) << "requests in (" << p << ", " << 2 * p << "] map to " << set.size()
                              << " block sizes";
    // A request of exactly 2^k uses a 2^k block: classes are 2^k*(1 + j/8).
  }
  for (std::size_t p = 256; p <= 65536; p *= 2) {
    void* b = am_malloc(p);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(am_usable_size(b), p) << "a power of two is a class boundary";
    am_free(b);
  }
}

TEST(SizeClass, LargeBlocksArePageRounded) {
  const std::size_t page = amt::page_size();
  for (std::size_t n :
       {65537ul, 70000ul, 100000ul, 131072ul + 1, 262144ul + 100, 1000000ul, 3000000ul}) {
    void* p = am_malloc(n);
    ASSERT_NE(p, nullptr) << n;
    std::size_t u = am_usable_size(p);
    EXPECT_GE(u, n);
    double waste = static_cast<double>(u - n) / static_cast<double>(u);
    EXPECT_LE(waste, 0.125) << "n=" << n << " usable=" << u;
    EXPECT_LT(u - n, page + n / 8) << "n=" << n << " usable=" << u;
    am_free(p);
  }
}

TEST(SizeClass, HugeBlocksCoverRequest) {
  for (std::size_t n :
       {(4ul << 20) - 1, 4ul << 20, (4ul << 20) + 1, 5ul << 20, (16ul << 20) + 12345}) {
    void* p = am_malloc(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_TRUE(amt::is_aligned(p, 16));
    std::size_t u = am_usable_size(p);
    EXPECT_GE(u, n);
    EXPECT_LE(static_cast<double>(u - n) / static_cast<double>(u), 0.125)
        << "n=" << n << " usable=" << u;
    static_cast<volatile char*>(p)[0] = 1;
    static_cast<volatile char*>(p)[u - 1] = 1;
    am_free(p);
  }
}

TEST(SizeClass, ManyLiveBlocksOfOneClassAreDistinctAndAligned) {
  for (std::size_t n : {1ul, 16ul, 48ul, 128ul, 200ul, 1000ul, 4000ul, 20000ul, 65536ul}) {
    std::set<void*> seen;
    std::vector<void*> v;
    const std::size_t count = n < 4096 ? 2000 : 200;
    for (std::size_t i = 0; i < count; ++i) {
      void* p = am_malloc(n);
      ASSERT_NE(p, nullptr);
      ASSERT_TRUE(amt::is_aligned(p, 16));
      ASSERT_TRUE(seen.insert(p).second) << "duplicate block " << p << " for n=" << n;
      amt::fill_pattern(p, n, i);
      v.push_back(p);
    }
    // No two live blocks overlap.
    std::size_t usable = am_usable_size(v[0]);
    void* last = nullptr;
    for (void* p : seen) {
      if (last) {
        EXPECT_GE(static_cast<char*>(p) - static_cast<char*>(last),
                  static_cast<std::ptrdiff_t>(usable));
      }
      last = p;
    }
    for (std::size_t i = 0; i < v.size(); ++i) {
      ASSERT_EQ(amt::check_pattern(v[i], n, i), SIZE_MAX)
          << "block " << i << " of size " << n << " corrupted";
      am_free(v[i]);
    }
  }
}

}  // namespace
