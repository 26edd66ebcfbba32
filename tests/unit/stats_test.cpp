// am_stats_get, am_collect and purging, am_stats_print(_json), and the
// AMALLOC_PURGE_DELAY / AMALLOC_STATS options (in child processes).
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"

namespace {

constexpr std::uint64_t kMiB = 1u << 20;

// ---- a small JSON checker (enough to validate one object) ------------------

struct JsonChecker {
  const std::string& s;
  std::size_t i = 0;
  explicit JsonChecker(const std::string& text) : s(text) {}
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool lit(const char* w) {
    std::size_t n = std::strlen(w);
    if (s.compare(i, n, w) != 0) return false;
    i += n;
    return true;
  }
  bool string() {
    if (i >= s.size() || s[i] != '"') return false;
    for (++i; i < s.size(); ++i) {
      char c = s[i];
      if (c == '"') {
        ++i;
        return true;
      }
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c == '\\') {
        if (++i >= s.size()) return false;
        if (s[i] == 'u') {
          for (int k = 0; k < 4; ++k)
            if (++i >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
        } else if (!std::strchr("\"\\/bfnrt", s[i])) {
          return false;
        }
      }
    }
    return false;
  }
  bool number() {
    std::size_t start = i;
    if (i < s.size() && s[i] == '-') ++i;
    if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    if (s[i] == '0')
      ++i;
    else
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    if (i < s.size() && s[i] == '.') {
      ++i;
      if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    }
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
      if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    }
    return i > start;
  }
  bool value(int depth = 0) {
    if (depth > 32) return false;
    ws();
    if (i >= s.size()) return false;
    char c = s[i];
    if (c == '{') {
      ++i;
      ws();
      if (i < s.size() && s[i] == '}') return ++i, true;
      for (;;) {
        ws();
        if (!string()) return false;
        ws();
        if (i >= s.size() || s[i] != ':') return false;
        ++i;
        if (!value(depth + 1)) return false;
        ws();
        if (i < s.size() && s[i] == ',') {
          ++i;
          continue;
        }
        if (i < s.size() && s[i] == '}') return ++i, true;
        return false;
      }
    }
    if (c == '[') {
      ++i;
      ws();
      if (i < s.size() && s[i] == ']') return ++i, true;
      for (;;) {
        if (!value(depth + 1)) return false;
        ws();
        if (i < s.size() && s[i] == ',') {
          ++i;
          continue;
        }
        if (i < s.size() && s[i] == ']') return ++i, true;
        return false;
      }
    }
    if (c == '"') return string();
    if (c == 't') return lit("true");
    if (c == 'f') return lit("false");
    if (c == 'n') return lit("null");
    return number();
  }
  // The whole text is one JSON value (trailing whitespace allowed).
  bool whole() {
    if (!value()) return false;
    ws();
    return i == s.size();
  }
};

bool valid_json(const std::string& s) { return JsonChecker(s).whole(); }

TEST(JsonChecker, SelfTest) {
  EXPECT_TRUE(valid_json(R"({"amalloc":"0.1.0","a":[1,2.5,-3e4],"b":{"c":null,"d":true}})"));
  EXPECT_FALSE(valid_json(R"({"amalloc":"0.1.0",})"));
  EXPECT_FALSE(valid_json(R"({"a":1)"));
  EXPECT_FALSE(valid_json(R"({"a":01})"));
}

// ---- am_stats_get -------------------------------------------------------------

TEST(Stats, GetFillsEveryField) {
  void* p = am_malloc(100);  // make sure the engine is initialised
  ASSERT_NE(p, nullptr);
  am_stats_t s = amt::stats();
  const std::uint64_t sentinel = 0xA5A5A5A5A5A5A5A5ULL;
  const std::uint64_t* f = reinterpret_cast<const std::uint64_t*>(&s);
  for (std::size_t k = 0; k < sizeof s / sizeof(std::uint64_t); ++k)
    EXPECT_NE(f[k], sentinel) << "am_stats_t field #" << k << " left unset";
  EXPECT_GE(s.segments, 1u);
  EXPECT_GE(s.heaps_created, 1u);
  EXPECT_GE(s.mmap_calls, 1u);
  EXPECT_GE(s.pages_in_use, 1u);
  EXPECT_GE(s.in_use_bytes, 100u);
  EXPECT_GE(s.committed_bytes, s.in_use_bytes);
  EXPECT_GE(s.reserved_bytes, s.committed_bytes);
  am_free(p);
}

TEST(Stats, CountersFollowAllocations) {
  am_stats_t s0 = amt::stats();
  std::vector<void*> small;
  for (int i = 0; i < 100000; ++i) {  // 100,000 x 100 bytes (112-byte blocks)
    void* p = am_malloc(100);
    ASSERT_NE(p, nullptr);
    small.push_back(p);
  }
  std::vector<void*> large;
  for (int i = 0; i < 4; ++i) {
    void* p = am_malloc(1 << 20);
    ASSERT_NE(p, nullptr);
    large.push_back(p);
  }
  void* huge = am_malloc(20u << 20);
  ASSERT_NE(huge, nullptr);
  am_stats_t s1 = amt::stats();
  const std::uint64_t expected = 100000u * 112u + 4u * kMiB + 20u * kMiB;
  EXPECT_GE(s1.in_use_bytes - s0.in_use_bytes, expected - expected / 50);
  EXPECT_LE(s1.in_use_bytes - s0.in_use_bytes, expected + expected / 4);
  EXPECT_GE(s1.committed_bytes, s1.in_use_bytes);
  EXPECT_GE(s1.reserved_bytes, s1.committed_bytes);
  EXPECT_GE(s1.large_blocks - s0.large_blocks, 5u) << "4 large + 1 huge block";
  EXPECT_GT(s1.pages_in_use, s0.pages_in_use);
  EXPECT_GE(s1.segments, s0.segments + 1);
  EXPECT_GT(s1.mmap_calls, s0.mmap_calls);

  for (void* p : small) am_free(p);
  for (void* p : large) am_free(p);
  am_free(huge);
  am_stats_t s2 = amt::stats();
  EXPECT_LE(s2.in_use_bytes, s0.in_use_bytes + kMiB / 4)
      << "in_use_bytes did not fall after freeing";
  EXPECT_EQ(s2.large_blocks, s0.large_blocks);
  EXPECT_EQ(s2.bad_frees, s0.bad_frees);
}

TEST(Stats, RemoteFreesAreCounted) {
  am_stats_t s0 = amt::stats();
  std::vector<void*> v;
  for (int i = 0; i < 1000; ++i) v.push_back(am_malloc(48));
  std::thread t([&] {
    for (void* p : v) am_free(p);  // freed by a thread that does not own them
  });
  t.join();
  am_collect(0);
  am_stats_t s1 = amt::stats();
  EXPECT_GE(s1.remote_frees - s0.remote_frees, 1u);
}

TEST(Stats, ThreadHeapsAreCreatedAndAbandoned) {
  am_stats_t s0 = amt::stats();
  std::thread t([] {
    void* p = am_malloc(48);
    static_cast<volatile char*>(p)[0] = 1;
    am_free(p);
  });
  t.join();
  am_stats_t s1 = amt::stats();
  EXPECT_GE(s1.heaps_created - s0.heaps_created, 1u);
  EXPECT_GE(s1.heaps_abandoned - s0.heaps_abandoned, 1u);
}

// ---- purging --------------------------------------------------------------------

struct Burst {
  am_stats_t before, peak, after;
  std::size_t rss_before = 0, rss_peak = 0, rss_after = 0;
};

// Allocates `bytes` of 64-byte blocks in this thread, touches them, frees
// them all, then calls `after_free`. The pointer array (from the system
// malloc) stays alive until the end so that it does not move RSS.
Burst burst_of_small_blocks(std::uint64_t bytes, const std::function<void()>& after_free) {
  Burst b;
  const std::size_t count = static_cast<std::size_t>(bytes / 64);
  std::vector<void*> v(count);
  b.rss_before = amt::rss_bytes();
  b.before = amt::stats();
  for (std::size_t i = 0; i < count; ++i) {
    void* p = am_malloc(64);
    if (!p) {
      ADD_FAILURE() << "am_malloc(64) failed at block " << i;
      v.resize(i);
      break;
    }
    static_cast<volatile std::uint64_t*>(p)[0] = i;
    static_cast<volatile std::uint64_t*>(p)[7] = i;
    v[i] = p;
  }
  b.peak = amt::stats();
  b.rss_peak = amt::rss_bytes();
  for (void* p : v) am_free(p);
  after_free();
  b.after = amt::stats();
  b.rss_after = amt::rss_bytes();
  return b;
}

TEST(Purge, CollectForceReturnsMemoryAfterBurst) {
  const std::uint64_t bytes = 200 * kMiB;
  Burst b = burst_of_small_blocks(bytes, [] { am_collect(1); });
  ASSERT_FALSE(HasFailure());
  // (Memory committed before the burst may be reused by it.)
  EXPECT_GE(b.peak.committed_bytes, bytes) << "committed_bytes below the 200 MiB of live blocks";
  EXPECT_GE(b.peak.in_use_bytes - b.before.in_use_bytes, bytes - bytes / 100);
  EXPECT_LT(b.after.committed_bytes, b.peak.committed_bytes / 4)
      << "committed_bytes after am_collect(1): " << b.after.committed_bytes << ", at peak "
      << b.peak.committed_bytes;
  EXPECT_LE(b.after.in_use_bytes, b.before.in_use_bytes + kMiB);
  // Given back by madvise (purged_bytes) or by unmapping (reserved_bytes).
  EXPECT_GE((b.after.purged_bytes - b.before.purged_bytes) +
                (b.peak.reserved_bytes > b.after.reserved_bytes
                     ? b.peak.reserved_bytes - b.after.reserved_bytes
                     : 0),
            bytes / 2)
      << "purged " << (b.after.purged_bytes - b.before.purged_bytes) << " bytes; reserved at peak "
      << b.peak.reserved_bytes << ", after " << b.after.reserved_bytes;
#if !AMT_SANITIZED
  // RSS is noisy under sanitizers; in a normal build it must follow (but
  // for free memory that was resident before, which the burst may reuse).
  const std::uint64_t free_before = b.before.committed_bytes - b.before.in_use_bytes;
  EXPECT_GE(b.rss_peak - b.rss_before + free_before, bytes - bytes / 10);
  EXPECT_LT(b.rss_after + bytes * 3 / 4, b.rss_peak)
      << "RSS before " << b.rss_before << ", at peak " << b.rss_peak << ", after am_collect(1) "
      << b.rss_after;
#endif
  std::printf(
      "committed: before %llu MiB, peak %llu MiB, after collect %llu MiB; RSS before %zu MiB, peak "
      "%zu "
      "MiB, after %zu MiB\n",
      static_cast<unsigned long long>(b.before.committed_bytes / kMiB),
      static_cast<unsigned long long>(b.peak.committed_bytes / kMiB),
      static_cast<unsigned long long>(b.after.committed_bytes / kMiB), b.rss_before >> 20,
      b.rss_peak >> 20, b.rss_after >> 20);
}

TEST(Purge, MemoryIsReusedAfterCollect) {
  // Purged memory comes back on demand and is usable (and zero for calloc).
  for (int round = 0; round < 3; ++round) {
    std::vector<void*> v;
    for (int i = 0; i < 200000; ++i) {
      void* p = am_calloc(1, 64);
      ASSERT_NE(p, nullptr);
      ASSERT_EQ(amt::check_bytes(p, 64, 0), SIZE_MAX);
      std::memset(p, 0xFF, 64);
      v.push_back(p);
    }
    for (void* p : v) am_free(p);
    am_collect(1);
  }
}

// Scenarios run in a child with AMALLOC_PURGE_DELAY set.
AMT_SCENARIO(purge_short_delay) {
  // AMALLOC_PURGE_DELAY=10 (ms): without force, memory empty for longer
  // than that is purged by am_collect(0) (or by the background worker).
  std::uint64_t peak = 0, now = 0;
  Burst b = burst_of_small_blocks(64 * kMiB, [&] {
    peak = amt::stats().committed_bytes;
    for (int i = 0; i < 100; ++i) {  // up to 2 s
      am_collect(0);
      now = amt::stats().committed_bytes;
      if (now < peak / 4) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  std::printf("peak %llu after %llu\n", static_cast<unsigned long long>(b.peak.committed_bytes),
              static_cast<unsigned long long>(b.after.committed_bytes));
  return b.after.committed_bytes < b.peak.committed_bytes / 4 ? 0 : 1;
}

AMT_SCENARIO(purge_long_delay) {
  // AMALLOC_PURGE_DELAY=600000 (10 min): am_collect(0) keeps recently
  // emptied memory committed; am_collect(1) still purges it.
  std::uint64_t kept = 0;
  Burst b = burst_of_small_blocks(32 * kMiB, [&] {
    am_collect(0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    am_collect(0);
    kept = amt::stats().committed_bytes;
    am_collect(1);
  });
  std::printf("peak %llu kept %llu after force %llu\n",
              static_cast<unsigned long long>(b.peak.committed_bytes),
              static_cast<unsigned long long>(kept),
              static_cast<unsigned long long>(b.after.committed_bytes));
  if (kept < b.peak.committed_bytes / 2) return 1;
  if (b.after.committed_bytes >= b.peak.committed_bytes / 4) return 2;
  return 0;
}

TEST(Purge, ShortPurgeDelayPurgesWithoutForce) {
  auto r = amt::run_scenario("purge_short_delay", {{"AMALLOC_PURGE_DELAY", "10"}});
  EXPECT_TRUE(r.exited_ok()) << r.describe();
}

TEST(Purge, LongPurgeDelayKeepsMemoryUntilForced) {
  auto r = amt::run_scenario("purge_long_delay", {{"AMALLOC_PURGE_DELAY", "600000"}});
  EXPECT_TRUE(r.exited_ok())
      << "exit code 1: purged before the delay; 2: am_collect(1) did not purge\n"
      << r.describe();
}

// ---- per size class ------------------------------------------------------------

am_class_stats_t class_of(std::size_t block_size) {
  std::vector<am_class_stats_t> cs(am_class_stats(nullptr, 0));
  am_class_stats(cs.data(), cs.size());
  for (const am_class_stats_t& c : cs)
    if (c.block_size == block_size) return c;
  ADD_FAILURE() << "no class of " << block_size << " bytes";
  return {};
}

TEST(ClassStats, EveryClassInOrderOfSize) {
  std::size_t n = am_class_stats(nullptr, 0);
  ASSERT_GT(n, 60u);
  std::vector<am_class_stats_t> cs(n + 5);
  EXPECT_EQ(am_class_stats(cs.data(), cs.size()), n);
  EXPECT_EQ(cs[0].block_size, 16u);
  EXPECT_EQ(cs[n - 1].block_size, 64u * 1024);
  for (std::size_t i = 1; i < n; i++) EXPECT_GT(cs[i].block_size, cs[i - 1].block_size);
  std::vector<am_class_stats_t> two(2);
  EXPECT_EQ(am_class_stats(two.data(), 2), n) << "a short array gets the first classes";
  EXPECT_EQ(two[1].block_size, 32u);
}

TEST(ClassStats, LiveBlocksFollowAllocations) {
  am_class_stats_t before = class_of(112);
  std::vector<void*> v;
  for (int i = 0; i < 10000; ++i) v.push_back(am_malloc(100));  // 112-byte blocks
  am_class_stats_t during = class_of(112);
  EXPECT_EQ(during.blocks_live - before.blocks_live, 10000u);
  EXPECT_GE(during.blocks_carved, during.blocks_live);
  EXPECT_GE(during.pages, 10000u * 112 / (64 * 1024));
  for (void* p : v) am_free(p);
  am_class_stats_t after = class_of(112);
  EXPECT_EQ(after.blocks_live, before.blocks_live);
}

// Where pages come from: fresh slots fault (the predictor's misses), or
// the worker built them ahead; the burst reserve serves a burst that comes
// back (both hits).
AMT_SCENARIO(class_pages_taken) {
  std::vector<void*> v;
  for (int i = 0; i < 4096; ++i) {  // 256 pages of 4 KiB blocks
    v.push_back(am_malloc(4096));
    std::memset(v.back(), 1, 4096);
  }
  am_class_stats_t first = class_of(4096);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the worker sees the demand
  for (void* p : v) am_free(p);
  v.clear();
  for (int i = 0; i < 4096; ++i) v.push_back(am_malloc(4096));
  am_class_stats_t again = class_of(4096);
  std::printf("COLD %llu\nREADY %llu\nRESERVE_TAKEN %llu\nCOLD_AGAIN %llu\n",
              static_cast<unsigned long long>(first.pages_cold),
              static_cast<unsigned long long>(first.pages_ready),
              static_cast<unsigned long long>(again.pages_reserve),
              static_cast<unsigned long long>(again.pages_cold - first.pages_cold));
  for (void* p : v) am_free(p);
  return 0;
}

TEST(ClassStats, PagesTakenColdAndFromTheReserve) {
  auto r = amt::run_scenario("class_pages_taken",
                             {{"AMALLOC_PREDICT", "1"}, {"AMALLOC_PURGE_DELAY", "600000"}});
  ASSERT_TRUE(r.exited_ok()) << r.describe();
  // The first burst's pages are cold, or built ahead by the worker.
  EXPECT_GE(amt::value_of(r.out, "COLD") + amt::value_of(r.out, "READY"), 250) << r.describe();
  EXPECT_GE(amt::value_of(r.out, "RESERVE_TAKEN"), 200) << r.describe();
  EXPECT_LT(amt::value_of(r.out, "COLD_AGAIN"), 50) << r.describe();
}

// committed_bytes counts what is resident: a segment whose pages the decay
// purged one by one goes to the cache with only its dirty pages counted
// (it used to count 4 MiB), and pages in the burst reserve count.
AMT_SCENARIO(committed_of_a_cached_segment) {
  void* keep = am_malloc(1024);
  std::vector<void*> v;
  for (std::uint64_t i = 0; i < 8 * kMiB / 1024; ++i) v.push_back(am_malloc(1024));
  for (void* p : v) am_free(p);
  for (int i = 0; i < 20; i++) {  // the decay purges the free pages one by one
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    am_collect(0);
  }
  std::uint64_t before = amt::stats().committed_bytes;
  am_free(keep);  // its segment (not the current page's) empties into the cache
  std::uint64_t after = amt::stats().committed_bytes;
  std::printf("COMMITTED %llu -> %llu\n", static_cast<unsigned long long>(before),
              static_cast<unsigned long long>(after));
  return after < before + kMiB ? 0 : 1;
}

TEST(Stats, CommittedCountsOnlyTheDirtyPagesOfACachedSegment) {
  auto r = amt::run_scenario("committed_of_a_cached_segment",
                             {{"AMALLOC_PURGE_DELAY", "50"}, {"AMALLOC_BACKGROUND", "0"}});
  EXPECT_TRUE(r.exited_ok()) << r.describe();
}

AMT_SCENARIO(committed_of_the_reserve) {
  std::vector<void*> v;
  for (std::uint64_t i = 0; i < 16 * kMiB / 512; ++i) {
    v.push_back(am_malloc(512));
    std::memset(v.back(), 1, 512);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the worker sees the demand
  for (void* p : v) am_free(p);
  am_stats_t s = amt::stats();
  std::printf("READY %llu COMMITTED %llu\n", static_cast<unsigned long long>(s.prefill_ready_bytes),
              static_cast<unsigned long long>(s.committed_bytes));
  if (s.prefill_ready_bytes < 4 * kMiB) return 2;  // no reserve kept: nothing to check
  return s.committed_bytes >= s.prefill_ready_bytes ? 0 : 1;
}

TEST(Stats, CommittedCountsTheBurstReserve) {
  auto r = amt::run_scenario("committed_of_the_reserve",
                             {{"AMALLOC_PREDICT", "1"}, {"AMALLOC_PURGE_DELAY", "600000"}});
  EXPECT_TRUE(r.exited_ok()) << "exit code 1: the reserve is not in committed_bytes; 2: no "
                                "reserve was kept\n"
                             << r.describe();
}

// AMALLOC_PURGE=free: purges use MADV_FREE. The kernel keeps the pages
// (LazyFree) until it needs them, and they may hold their old bytes: a
// large calloc that reuses them must still return zeros.
long lazy_free_kb() {
  std::FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "LazyFree: %ld kB", &kb) == 1) break;
  std::fclose(f);
  return kb;
}

AMT_SCENARIO(purge_with_madv_free) {
  std::vector<void*> v;
  for (int i = 0; i < 8192; ++i) {  // 32 MiB of 4 KiB blocks
    v.push_back(am_malloc(4096));
    std::memset(v.back(), 0x5A, 4096);
  }
  for (void* p : v) am_free(p);
  am_collect(1);
  std::printf("LAZY_KB %ld\n", lazy_free_kb());
  constexpr std::size_t kBig = 1u << 20;
  void* big = am_malloc(kBig);
  std::memset(big, 0xAB, kBig);
  am_free(big);   // its segment goes to the cache,
  am_collect(1);  // and is purged there, bytes and all
  auto* z = static_cast<unsigned char*>(am_calloc(1, kBig));
  std::printf("CALLOC_NONZERO %zu\n",
              z ? (amt::check_bytes(z, kBig, 0) == SIZE_MAX ? 0 : 1) : std::size_t{2});
  am_free(z);
  return 0;
}

TEST(Purge, FreeAdviceLeavesLazyFreePagesAndCallocStillZeroes) {
  auto r = amt::run_scenario("purge_with_madv_free",
                             {{"AMALLOC_PURGE", "free"}, {"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(r.exited_ok()) << r.describe();
  EXPECT_EQ(amt::value_of(r.out, "CALLOC_NONZERO"), 0) << r.describe();
  long lazy = amt::value_of(r.out, "LAZY_KB");
  if (lazy < 0) GTEST_SKIP() << "no LazyFree in /proc/self/smaps_rollup";
  EXPECT_GE(lazy, 16 * 1024) << "MADV_FREE was not used\n" << r.describe();
}

// A cached segment reused as another kind (a small one as medium, whose
// pages end at slot 56) keeps track of what its earlier life left resident
// past its pages: a forced purge returns all of it.
std::size_t resident_kib(std::uintptr_t from, std::size_t bytes) {
  return amt::resident_kib(reinterpret_cast<const void*>(from), bytes);
}

AMT_SCENARIO(segment_changes_kind) {
  constexpr std::uintptr_t kSeg = 4u << 20;
  std::uintptr_t seg = 0, seg2 = 0;
  std::thread([&] {  // fills a small segment, frees it all, exits
    std::vector<void*> v;
    for (int i = 0; i < 4032; i++) {
      v.push_back(am_malloc(1024));
      std::memset(v.back(), 1, 1024);
    }
    seg = reinterpret_cast<std::uintptr_t>(v[0]) & ~(kSeg - 1);
    for (void* p : v) am_free(p);
  })
      .join();
  std::printf("TAIL_BEFORE_KIB %zu\n", resident_kib(seg + (57u << 16), 7u << 16));
  std::thread([&] {  // a medium page in the same (cached) segment
    void* p = am_malloc(16384);
    std::memset(p, 2, 16384);
    seg2 = reinterpret_cast<std::uintptr_t>(p) & ~(kSeg - 1);
    am_free(p);
  })
      .join();
  am_collect(1);
  std::printf("SAME_SEGMENT %d\nTAIL_AFTER_KIB %zu\n", seg2 == seg ? 1 : 0,
              resident_kib(seg + (57u << 16), 7u << 16));
  return 0;
}

TEST(Purge, ASegmentReusedAsAnotherKindIsPurgedWhole) {
  auto r = amt::run_scenario("segment_changes_kind", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(r.exited_ok()) << r.describe();
  if (amt::value_of(r.out, "SAME_SEGMENT") != 1 || amt::value_of(r.out, "TAIL_BEFORE_KIB") == 0)
    GTEST_SKIP() << "the medium page went to another segment\n" << r.describe();
  EXPECT_EQ(amt::value_of(r.out, "TAIL_AFTER_KIB"), 0) << r.describe();
}

// ---- reports -------------------------------------------------------------------

TEST(Report, StatsPrintFirstLineHasVersion) {
  void* p = am_malloc(1000);
  std::string out = amt::capture_stderr([] { am_stats_print(); });
  am_free(p);
  ASSERT_FALSE(out.empty()) << "am_stats_print wrote nothing to stderr";
  std::string first = out.substr(0, out.find('\n'));
  EXPECT_NE(first.find("amalloc 0.1.0"), std::string::npos) << "first line: " << first;
  EXPECT_EQ(out.back(), '\n');
}

TEST(Report, StatsPrintJsonIsOneLineOfJson) {
  void* p = am_malloc(1000);
  std::string out = amt::capture_stderr([] { am_stats_print_json(); });
  am_free(p);
  ASSERT_FALSE(out.empty()) << "am_stats_print_json wrote nothing to stderr";
  EXPECT_EQ(out.rfind("{\"amalloc\":\"0.1.0\"", 0), 0u) << out;
  ASSERT_EQ(out.back(), '\n') << out;
  std::string line = out.substr(0, out.size() - 1);
  EXPECT_EQ(line.find('\n'), std::string::npos) << "more than one line: " << out;
  EXPECT_TRUE(valid_json(line)) << "not valid JSON: " << line;
}

AMT_SCENARIO(stats_at_exit) {
  void* p = am_malloc(12345);
  static_cast<volatile char*>(p)[0] = 1;
  am_free(p);
  return 0;  // the report is printed at exit
}

TEST(Report, StatsOptionPrintsAtExit) {
  auto r = amt::run_scenario("stats_at_exit", {{"AMALLOC_STATS", "1"}});
  EXPECT_TRUE(r.exited_ok()) << r.describe();
  EXPECT_NE(r.err.find("amalloc 0.1.0"), std::string::npos) << r.describe();

  auto j = amt::run_scenario("stats_at_exit", {{"AMALLOC_STATS", "json"}});
  EXPECT_TRUE(j.exited_ok()) << j.describe();
  auto lines = amt::lines_containing(j.err, "{\"amalloc\":\"0.1.0\"");
  ASSERT_EQ(lines.size(), 1u) << j.describe();
  EXPECT_TRUE(valid_json(lines[0])) << lines[0];

  auto n = amt::run_scenario("stats_at_exit", {{"AMALLOC_STATS", ""}});
  EXPECT_TRUE(n.exited_ok()) << n.describe();
  EXPECT_EQ(n.err.find("amalloc"), std::string::npos) << "report printed without AMALLOC_STATS\n"
                                                      << n.describe();
}

}  // namespace
