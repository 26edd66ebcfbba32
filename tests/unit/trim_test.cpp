// Trimming sparse pages (allocator/trim.cpp): pages of blocks larger than
// an OS page that are a quarter live or less give back the OS pages of
// their free blocks; survivors keep their bytes, and the trimmed blocks
// serve allocations again. Each case runs in a fresh process, so that the
// RSS it reads is its own.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "amalloc/amalloc.h"
#include "amalloc_test_support.h"
#include "gtest/gtest.h"

namespace {

// 12 KiB blocks: 42 to a 512 KiB medium page, each three whole OS pages.
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
  // 90% of 24 MiB is free, in runs of nine 12 KiB blocks between live
  // ones: 21.6 MiB, but for the head pages' first 64 KiB.
  EXPECT_GT(amt::value_of(c.out, "TRIMMED_KIB"), 20 * 1024) << c.describe();
  EXPECT_LT(amt::value_of(c.out, "RSS_AFTER_KIB") + 18 * 1024,
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
// they write links into live blocks while the owner trims the free ones.
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
  // The 36 free blocks, trimmed or not, serve them all.
  std::size_t in_page = 0;
  for (const Obj& o : again) in_page += o.p >= all[0].p && o.p < all[0].p + 512 * 1024;
  print("AGAIN_IN_PAGE", in_page);
  for (const Obj& o : kept) am_free(o.p);
  for (const Obj& o : again) am_free(o.p);
  return 0;
}

TEST(Trim, TheHeadPageKeepsItsFirstFreeBlocks) {
  auto c = amt::run_scenario("trim_head_page", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  // 36 free blocks, the first five (64 KiB) kept: the other 31 trimmed
  // whole (one run of 12 KiB blocks: no OS page shared with a live one).
  EXPECT_EQ(amt::value_of(c.out, "TRIMMED_KIB"), 31 * 12) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "KEPT_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "AGAIN_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "AGAIN_IN_PAGE"), 36) << c.describe();
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

// 10 KiB blocks do not end on OS pages: an OS page that a free block shares
// with a neighbour goes when the neighbour was trimmed before, and every
// block serves allocations again afterwards.
AMT_SCENARIO(trim_shared_os_pages) {
  constexpr std::size_t kTen = 10 * 1024, kPerPage = 512 * 1024 / kTen;  // 51
  std::vector<unsigned char*> p(kPerPage);
  for (auto& b : p) b = static_cast<unsigned char*>(am_malloc(kTen));  // page P, full
  std::sort(p.begin(), p.end());
  unsigned char* lo = p[0];
  for (std::size_t i = 0; i < kPerPage; i++) {
    if (p[i] != lo + i * kTen) return 21;
    amt::fill_pattern(p[i], kTen, i);
  }
  void* next_page = am_malloc(kTen);  // P is full: this opens the next page
  // 12 live blocks (a quarter of 51 at most), then 7 of them freed.
  std::vector<bool> live(kPerPage, false);
  for (std::size_t i : {0, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 50}) live[i] = true;
  for (std::size_t i = 0; i < kPerPage; i++)
    if (!live[i]) am_free(p[i]);
  am_collect(0);
  for (std::size_t i : {10, 12, 14, 16, 18, 20, 22}) {
    live[i] = false;
    am_free(p[i]);
  }
  am_collect(0);
  // Every OS page of P that holds no live byte is gone.
  std::size_t kept_free = 0, live_bad = 0;
  unsigned char vec[128];
  if (mincore(lo, 128 * 4096, vec) != 0) return 22;
  for (std::size_t pg = 0; pg < kPerPage * kTen / 4096; pg++) {
    std::size_t a = pg * 4096, b = a + 4096;
    bool touches_live = false;
    for (std::size_t i = a / kTen; i <= (b - 1) / kTen; i++) touches_live |= live[i];
    kept_free += !touches_live && (vec[pg] & 1);
  }
  for (std::size_t i = 0; i < kPerPage; i++)
    if (live[i]) live_bad += amt::check_pattern(p[i], kTen, i) != SIZE_MAX;
  print("KEPT_FREE_OS_PAGES", kept_free);
  print("LIVE_BAD", live_bad);
  // The next page's 50 free blocks and P's 46 are all handed out again.
  std::size_t in_p = 0, again_bad = 0;
  std::vector<unsigned char*> again;
  for (std::size_t i = 0; i < 96; i++) {
    auto* q = static_cast<unsigned char*>(am_malloc(kTen));
    amt::fill_pattern(q, kTen, 1000 + i);
    in_p += q >= lo && q < lo + kPerPage * kTen;
    again.push_back(q);
  }
  for (std::size_t i = 0; i < again.size(); i++)
    again_bad += amt::check_pattern(again[i], kTen, 1000 + i) != SIZE_MAX;
  print("AGAIN_IN_P", in_p);
  print("AGAIN_BAD", again_bad);
  for (auto* q : again) am_free(q);
  for (std::size_t i = 0; i < kPerPage; i++)
    if (live[i]) am_free(p[i]);
  am_free(next_page);
  return 0;
}

TEST(Trim, AnOsPageSharedWithATrimmedBlockGoesToo) {
  auto c = amt::run_scenario("trim_shared_os_pages", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "KEPT_FREE_OS_PAGES"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "LIVE_BAD"), 0) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "AGAIN_IN_P"), 46) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "AGAIN_BAD"), 0) << c.describe();
}

// No am_collect and no idle point: a heap that goes on allocating from the
// pages it has (so it never needs a new one) trims its sparse pages at the
// slow path where a page runs out, in passes of 200 us.
AMT_SCENARIO(trim_while_allocating) {
  // Pages of 64-byte blocks, each kept by a survivor: the loop below fills
  // and empties them without needing a new page.
  std::vector<void*> small, survivors;
  for (int i = 0; i < 20000; i++) small.push_back(am_malloc(64));
  for (std::size_t i = 0; i < small.size(); i++)
    if (i % 256 == 0)
      survivors.push_back(small[i]);
    else
      am_free(small[i]);
  small.clear();
  std::vector<Obj> kept = sparse();
  const std::uint64_t t0 = amt::stats().trimmed_bytes;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(300)) {
    for (int i = 0; i < 19900; i++) small.push_back(am_malloc(64));  // pages run out
    for (void* p : small) am_free(p);
    small.clear();
  }
  for (void* p : survivors) am_free(p);
  print("TRIMMED_KIB", (amt::stats().trimmed_bytes - t0) / 1024);
  print("KEPT_BAD", bad(kept));
  for (const Obj& o : kept) am_free(o.p);
  return 0;
}

TEST(Trim, SparsePagesAreTrimmedWhileTheHeapAllocates) {
  auto c = amt::run_scenario("trim_while_allocating", {{"AMALLOC_BACKGROUND", "0"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_GT(amt::value_of(c.out, "TRIMMED_KIB"), 18 * 1024) << c.describe();
  EXPECT_EQ(amt::value_of(c.out, "KEPT_BAD"), 0) << c.describe();
}
