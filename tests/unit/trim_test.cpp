// Trimming sparse pages (allocator/trim.cpp): pages of blocks larger than
// an OS page that are a quarter live or less give back the OS pages inside
// their free blocks; survivors keep their bytes, and the trimmed blocks
// serve allocations again. Each case runs in a fresh process, so that the
// RSS it reads is its own.
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "amalloc/amalloc.h"
#include "amalloc_test_support.h"
#include "gtest/gtest.h"

namespace {

// 12 KiB blocks: 42 to a 512 KiB medium page, two of every three OS pages
// of a free block lie past its link.
constexpr std::size_t kSize = 12 * 1024;
constexpr std::size_t kCount = 2048;  // 24 MiB

struct Obj {
  unsigned char* p;
  std::uint64_t seed;
};

// `count` blocks, each written in full with the pattern of its seed (seeds
// from `first`).
std::vector<Obj> allocate(std::size_t count, std::uint64_t first) {
  std::vector<Obj> v;
  for (std::size_t i = 0; i < count; i++) {
    auto* p = static_cast<unsigned char*>(am_malloc(kSize));
    if (!p) std::exit(20);
    amt::fill_pattern(p, kSize, first + i);
    v.push_back({p, first + i});
  }
  return v;
}

// Blocks written in full, then all but every tenth freed: sparse pages.
std::vector<Obj> sparse() {
  std::vector<Obj> all = allocate(kCount, 0);
  std::vector<Obj> kept;
  for (const Obj& o : all)
    if (o.seed % 10 == 0)
      kept.push_back(o);
    else
      am_free(o.p);
  return kept;
}

std::size_t bad(const std::vector<Obj>& v) {
  std::size_t n = 0;
  for (const Obj& o : v) n += amt::check_pattern(o.p, kSize, o.seed) != SIZE_MAX;
  return n;
}

void print(const char* what, std::size_t v) { std::printf("%s %zu\n", what, v); }

}  // namespace

AMT_SCENARIO(trim_sparse_pages) {
  std::vector<Obj> kept = sparse();
  std::size_t before = amt::rss_bytes();
  am_collect(0);  // the owner trims (as its slow paths and idle point do, on a budget)
  std::size_t after = amt::rss_bytes();
  print("RSS_BEFORE_KIB", before / 1024);
  print("RSS_AFTER_KIB", after / 1024);
  print("TRIMMED_KIB", amt::stats().trimmed_bytes / 1024);
  print("KEPT_BAD", bad(kept));
  // The trimmed blocks serve allocations again, and read back what is
  // written into them.
  std::vector<Obj> fresh = allocate(kCount / 2, 1000000);
  print("FRESH_BAD", bad(fresh));
  print("KEPT_BAD_AFTER", bad(kept));
  for (const Obj& o : kept) am_free(o.p);
  for (const Obj& o : fresh) am_free(o.p);
  return 0;
}

TEST(Trim, SparsePagesGiveBackTheFreeOsPagesInside) {
  auto c = amt::run_scenario("trim_sparse_pages", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  // 90% of 24 MiB is free, two thirds of it past the blocks' links: 14 MiB.
  EXPECT_GT(amt::value_of(c.out, "TRIMMED_KIB"), 12 * 1024) << c.describe();
  EXPECT_LT(amt::value_of(c.out, "RSS_AFTER_KIB") + 12 * 1024,
            amt::value_of(c.out, "RSS_BEFORE_KIB"))
      << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "KEPT_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "FRESH_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "KEPT_BAD_AFTER"), 0) << c.describe();
}

TEST(Trim, OffKeepsTheMemory) {
  auto c =
      amt::run_scenario("trim_sparse_pages", {{"AMALLOC_BACKGROUND", "0"}, {"AMALLOC_TRIM", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "TRIMMED_KIB"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "FRESH_BAD"), 0) << c.describe();
}

// Other threads free into the sparse pages while the owner trims them:
// their frees write the blocks' links, which trimming keeps.
AMT_SCENARIO(trim_with_remote_frees) {
  std::vector<Obj> kept = sparse();
  std::vector<Obj> theirs(kept.begin(), kept.begin() + kept.size() / 2);
  std::vector<Obj> mine(kept.begin() + kept.size() / 2, kept.end());
  std::size_t theirs_bad = 0;
  std::thread t([&] {
    for (const Obj& o : theirs) {
      theirs_bad += amt::check_pattern(o.p, kSize, o.seed) != SIZE_MAX;
      am_free(o.p);
    }
  });
  for (int i = 0; i < 50; i++) am_collect(0);
  t.join();
  am_collect(0);
  print("THEIRS_BAD", theirs_bad);
  print("MINE_BAD", bad(mine));
  std::vector<Obj> fresh = allocate(kCount, 2000000);
  print("FRESH_BAD", bad(fresh));
  for (const Obj& o : mine) am_free(o.p);
  for (const Obj& o : fresh) am_free(o.p);
  return 0;
}

TEST(Trim, RemoteFreesDuringTrimming) {
  auto c = amt::run_scenario("trim_with_remote_frees", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "THEIRS_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "MINE_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "FRESH_BAD"), 0) << c.describe();
}

// The page allocation goes on in is trimmed too once it stayed idle for a
// pass, past the free blocks its next allocations take first.
AMT_SCENARIO(trim_head_page) {
  std::vector<Obj> all = allocate(40, 0);  // one 512 KiB page of 12 KiB blocks
  std::vector<Obj> kept(all.begin(), all.begin() + 4);
  for (std::size_t i = 4; i < all.size(); i++) am_free(all[i].p);
  am_collect(0);  // the head page is seen idle here,
  am_collect(0);  // and trimmed at the next pass
  print("TRIMMED_KIB", amt::stats().trimmed_bytes / 1024);
  print("KEPT_BAD", bad(kept));
  std::vector<Obj> again = allocate(36, 500);
  print("AGAIN_BAD", bad(again));
  for (const Obj& o : kept) am_free(o.p);
  for (const Obj& o : again) am_free(o.p);
  return 0;
}

TEST(Trim, TheHeadPageKeepsItsFirstFreeBlocks) {
  auto c = amt::run_scenario("trim_head_page", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  // 36 free blocks, the first five (64 KiB) kept: 31 trimmed, 8 KiB each.
  EXPECT_EQ(amt::value_of(c.out, "TRIMMED_KIB"), 31 * 8) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "KEPT_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "AGAIN_BAD"), 0) << c.describe();
}

// A page trimmed once, filled again and thinned out again is trimmed again.
AMT_SCENARIO(trim_after_a_refill) {
  std::vector<Obj> all = allocate(43, 0);  // page P: the first 42 blocks
  auto* lo = all[0].p;
  auto in_p = [lo](const Obj& o) { return o.p >= lo && o.p < lo + 512 * 1024; };
  for (std::size_t i = 2; i < 42; i++) am_free(all[i].p);  // P: 2 live
  std::uint64_t t0 = amt::stats().trimmed_bytes;
  am_collect(0);
  print("FIRST_KIB", (amt::stats().trimmed_bytes - t0) / 1024);
  std::vector<Obj> refill, in_page;
  for (std::size_t i = 0; i < 120 && in_page.size() < 40; i++) {
    refill.push_back(allocate(1, 100 + i)[0]);
    if (in_p(refill.back())) in_page.push_back(refill.back());
  }
  print("REFILLED", in_page.size());
  for (const Obj& o : in_page) am_free(o.p);  // P: 2 live again
  t0 = amt::stats().trimmed_bytes;
  am_collect(0);
  am_collect(0);
  print("SECOND_KIB", (amt::stats().trimmed_bytes - t0) / 1024);
  return 0;
}

TEST(Trim, APageIsTrimmedAgainAfterARefill) {
  auto c = amt::run_scenario("trim_after_a_refill", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  ASSERT_EQ(amt::value_of(c.out, "REFILLED"), 40) << c.describe();
  EXPECT_GT(amt::value_of(c.out, "FIRST_KIB"), 200) << c.describe();
  EXPECT_GT(amt::value_of(c.out, "SECOND_KIB"), 200) << c.describe();
}
