// Spans (allocator/segment.cpp): large blocks up to 1 MiB share segments,
// a run of 64 KiB page slots each; they grow in place while the slots that
// follow are free, shrink in place giving the tail back, and freed slots
// stay resident only up to a bounded pool. Each case runs in a fresh
// process, so that the slots it sees are its own.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "amalloc/amalloc.h"
#include "amalloc_test_support.h"

namespace {

constexpr std::size_t kSlot = 64 * 1024;

std::uintptr_t segment_of(const void* p) { return reinterpret_cast<std::uintptr_t>(p) >> 22; }

unsigned char* filled(std::size_t n, std::uint64_t seed) {
  auto* p = static_cast<unsigned char*>(am_malloc(n));
  if (!p) std::exit(20);
  amt::fill_pattern(p, n, seed);
  return p;
}

void print(const char* what, std::size_t v) { std::printf("%s %zu\n", what, v); }

}  // namespace

// 60 blocks of 100 KiB (two slots each) fit in two segments, not 60, and
// keep their bytes while their neighbours come and go.
AMT_SCENARIO(span_share) {
  std::vector<unsigned char*> v;
  for (std::size_t i = 0; i < 60; i++) v.push_back(filled(100 * 1024, i));
  std::set<std::uintptr_t> segs;
  std::size_t misaligned = 0;
  for (auto* p : v) {
    segs.insert(segment_of(p));
    misaligned += reinterpret_cast<std::uintptr_t>(p) % kSlot != 0;
  }
  print("SEGMENTS", segs.size());
  print("MISALIGNED", misaligned);
  for (std::size_t i = 0; i < v.size(); i += 2) am_free(v[i]);
  for (std::size_t i = 0; i < v.size(); i += 2) v[i] = filled(70 * 1024 + i * 1000, 1000 + i);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < v.size(); i++) {
    std::size_t n = i % 2 ? 100 * 1024 : 70 * 1024 + i * 1000;
    bad += amt::check_pattern(v[i], n, i % 2 ? i : 1000 + i) != SIZE_MAX;
  }
  print("BAD", bad);
  am_stats_t st;
  am_stats_get(&st);
  print("LARGE_BLOCKS", st.large_blocks);
  for (auto* p : v) am_free(p);
  return 0;
}

TEST(Spans, LargeBlocksShareSegments) {
  auto c = amt::run_scenario("span_share", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_LE(amt::value_of(c.out, "SEGMENTS"), 3) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "MISALIGNED"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "BAD"), 0) << c.describe();
  EXPECT_GE(amt::value_of(c.out, "LARGE_BLOCKS"), 60) << c.describe();
}

// A span grows in place into the free slots that follow it, moves when a
// neighbour is in the way, and shrinks in place, its tail serving the next
// span.
AMT_SCENARIO(span_resize) {
  unsigned char* p = filled(100 * 1024, 1);
  auto* q = static_cast<unsigned char*>(am_realloc(p, 300 * 1024));
  print("GREW_IN_PLACE", q == p);
  amt::fill_pattern(q, 300 * 1024, 2);
  unsigned char* next = filled(100 * 1024, 3);  // right after q's 5 slots
  print("NEXT_AFTER", next == q + 5 * kSlot);
  auto* r = static_cast<unsigned char*>(am_realloc(q, 600 * 1024));
  print("MOVED", r != q);
  print("MOVED_BAD", amt::check_pattern(r, 300 * 1024, 2) != SIZE_MAX);
  amt::fill_pattern(r, 600 * 1024, 4);
  auto* s = static_cast<unsigned char*>(am_realloc(r, 150 * 1024));
  print("SHRANK_IN_PLACE", s == r);
  print("SHRUNK_BAD", amt::check_pattern(s, 150 * 1024, 4) != SIZE_MAX);
  // The 7 slots past the 3 it keeps are free again, and resident: the next
  // span of that size goes there.
  unsigned char* tail = filled(400 * 1024, 5);
  print("TAIL_REUSED", tail == s + 3 * kSlot);
  print("NEXT_BAD", amt::check_pattern(next, 100 * 1024, 3) != SIZE_MAX);
  am_free(tail);
  am_free(s);
  am_free(next);
  return 0;
}

TEST(Spans, ResizeInPlaceWhereTheSlotsAllow) {
  auto c = amt::run_scenario("span_resize", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "GREW_IN_PLACE"), 1) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "NEXT_AFTER"), 1) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "MOVED"), 1) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "MOVED_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "SHRANK_IN_PLACE"), 1) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "SHRUNK_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "TAIL_REUSED"), 1) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "NEXT_BAD"), 0) << c.describe();
}

// Freed slots of segments that stay in use keep at most 16 MiB resident
// (the rest goes back at once), and the decay or am_collect takes the rest.
AMT_SCENARIO(span_dirty_pool) {
  std::vector<unsigned char*> v;
  for (std::size_t i = 0; i < 150; i++) v.push_back(filled(250 * 1024, i));  // 4 slots
  std::set<std::uintptr_t> kept;
  std::size_t freed = 0;
  const std::size_t before = amt::rss_bytes();
  for (auto* p : v)
    if (!kept.insert(segment_of(p)).second) {  // one block per segment stays
      am_free(p);
      freed += 4 * kSlot;
    }
  const std::size_t after = amt::rss_bytes();
  am_collect(1);
  const std::size_t collected = amt::rss_bytes();
  print("FREED_KIB", freed / 1024);
  print("KEPT_KIB", (before - after) > freed ? 0 : (freed - (before - after)) / 1024);
  print("AFTER_COLLECT_DROP_KIB", after > collected ? (after - collected) / 1024 : 0);
  // The blocks that stayed kept their bytes (each the first of its segment).
  std::set<std::uintptr_t> seen;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < v.size(); i++)
    if (seen.insert(segment_of(v[i])).second) {
      bad += amt::check_pattern(v[i], 250 * 1024, i) != SIZE_MAX;
      am_free(v[i]);
    }
  print("KEPT_BAD", bad);
  return 0;
}

TEST(Spans, FreedSlotsStayResidentUpToABound) {
  auto c = amt::run_scenario("span_dirty_pool", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_GT(amt::value_of(c.out, "FREED_KIB"), 30 * 1024) << c.describe();
  // What stays resident of the freed slots: the pool (16 MiB), not all.
  EXPECT_LE(amt::value_of(c.out, "KEPT_KIB"), 18 * 1024) << c.describe();
  EXPECT_GE(amt::value_of(c.out, "KEPT_KIB"), 8 * 1024) << c.describe();
  EXPECT_GE(amt::value_of(c.out, "AFTER_COLLECT_DROP_KIB"), 8 * 1024) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "KEPT_BAD"), 0) << c.describe();
}

// A span block placed on slots a bigger block left resident: what lies
// past its end in its last slot is resident too, until a trimming pass
// (here am_collect) gives it back; the block keeps its bytes.
AMT_SCENARIO(span_tail_trim) {
  auto* big = filled(16 * kSlot, 1);  // 1 MiB: 16 resident slots
  am_free(big);
  constexpr std::size_t kSize = 65 * 1024;  // 68 KiB of pages, 2 slots
  auto* p = filled(kSize, 2);
  const std::size_t tail_at = 68 * 1024, tail = 2 * kSlot - tail_at;
  print("SAME_PLACE", p == big);
  print("TAIL_BEFORE_KIB", amt::resident_kib(p + tail_at, tail));
  am_collect(0);
  print("TAIL_AFTER_KIB", amt::resident_kib(p + tail_at, tail));
  print("BLOCK_KIB", amt::resident_kib(p, tail_at));
  print("BAD", amt::check_pattern(p, kSize, 2) != SIZE_MAX);
  am_free(p);
  return 0;
}

TEST(Spans, TheTailPastABlockPlacedOnResidentSlotsIsGivenBack) {
  auto c = amt::run_scenario("span_tail_trim", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  ASSERT_EQ(amt::value_of(c.out, "SAME_PLACE"), 1) << c.describe();
  ASSERT_EQ(amt::value_of(c.out, "TAIL_BEFORE_KIB"), 60) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "TAIL_AFTER_KIB"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "BLOCK_KIB"), 68) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "BAD"), 0) << c.describe();
}

// realloc of a span far past what a segment holds fails cleanly (ENOMEM
// for sizes no mapping can have), and the block stays as it was.
AMT_SCENARIO(span_huge_realloc) {
  unsigned char* p = filled(250 * 1024, 7);
  std::size_t failed = 0;
  for (std::size_t n : {(std::size_t{1} << 48) + 192 * 1024, std::size_t{1} << 48}) {
    errno = 0;
    void* q = am_realloc(p, n);
    failed += q == nullptr && errno == ENOMEM;
    if (q) p = static_cast<unsigned char*>(q);
  }
  print("FAILED", failed);
  print("USABLE_KIB", am_usable_size(p) / 1024);
  print("BAD", amt::check_pattern(p, 250 * 1024, 7) != SIZE_MAX);
  unsigned char* other = filled(250 * 1024, 8);  // must not be p's memory
  print("OVERLAP", other < p + 250 * 1024 && p < other + 250 * 1024);
  am_free(other);
  am_free(p);
  return 0;
}

TEST(Spans, ReallocPastAnyMappingFailsAndKeepsTheBlock) {
  auto c = amt::run_scenario("span_huge_realloc", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "FAILED"), 2) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "USABLE_KIB"), 252) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "OVERLAP"), 0) << c.describe();
}

// With AMALLOC_PURGE=free, slots purged lazily may keep their bytes:
// calloc zeroes those, and only those (fresh slots are not touched).
AMT_SCENARIO(span_calloc_lazy) {
  std::vector<unsigned char*> v;
  for (std::size_t i = 0; i < 120; i++) {
    auto* p = static_cast<unsigned char*>(am_malloc(300 * 1024));
    std::memset(p, 0xFF, 300 * 1024);
    v.push_back(p);
  }
  for (auto* p : v) am_free(p);  // past the 16 MiB pool: purged with MADV_FREE
  std::size_t nonzero = 0;
  for (auto*& p : v) {
    p = static_cast<unsigned char*>(am_calloc(1, 300 * 1024));
    nonzero += amt::check_bytes(p, 300 * 1024, 0) != SIZE_MAX;
  }
  print("NONZERO", nonzero);
  for (auto* p : v) am_free(p);
  // Fresh spans: calloc writes nothing into them.
  const std::size_t before = amt::rss_bytes();
  std::vector<void*> fresh;
  for (int i = 0; i < 100; i++) fresh.push_back(am_calloc(1, 1000 * 1000));
  print("FRESH_GROWTH_KIB", (amt::rss_bytes() - before) / 1024);
  for (void* p : fresh) am_free(p);
  return 0;
}

TEST(Spans, CallocZeroesOnlyWhatMayHoldOldBytes) {
  auto c = amt::run_scenario("span_calloc_lazy",
                             {{"AMALLOC_BACKGROUND", "0"}, {"AMALLOC_PURGE", "free"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "NONZERO"), 0) << c.describe();
  // 100 MB of calloc'ed spans that nobody writes; the ones that reuse the
  // 36 MiB freed above are zeroed (and so resident) where they may hold
  // old bytes.
  EXPECT_LT(amt::value_of(c.out, "FRESH_GROWTH_KIB"), 40 * 1024) << c.describe();
}
