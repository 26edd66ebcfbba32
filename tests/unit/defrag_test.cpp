// Defragmentation: the hint, moving blocks out of sparse pages, and
// allocation from the fullest pages first.
#include <algorithm>
#include <cstring>
#include <vector>

#include "amalloc/amalloc.h"
#include "amalloc_test_support.h"
#include "gtest/gtest.h"

namespace {

constexpr std::size_t kSize = 64;
constexpr std::size_t kBlocks = 32 * 1024;  // 2 MiB: 32 pages of 64 KiB

struct Obj {
  void* p;
  std::uint64_t seed;
};

// Pages of the tests' class (other classes may hold pages other tests left
// when all run in one process).
std::uint64_t pages_in_use() {
  std::vector<am_class_stats_t> cs(am_class_stats(nullptr, 0));
  am_class_stats(cs.data(), cs.size());
  for (const am_class_stats_t& c : cs)
    if (c.block_size == kSize) return c.pages;
  return 0;
}

// Fills pages with blocks, then frees a random 90%: sparse pages.
std::vector<Obj> sparse_pages(amt::Rng& rng) {
  std::vector<Obj> all;
  for (std::size_t i = 0; i < kBlocks; i++) {
    Obj o{am_malloc(kSize), rng.next()};
    amt::fill_pattern(o.p, kSize, o.seed);
    all.push_back(o);
  }
  std::vector<Obj> kept;
  for (Obj& o : all)
    if (rng.chance(10))
      kept.push_back(o);
    else
      am_free(o.p);
  return kept;
}

}  // namespace

TEST(Defrag, MovingHintedBlocksEmptiesSparsePages) {
  amt::Rng rng(7);
  const std::uint64_t defrag_moves_before = amt::stats().defrag_moves;
  std::vector<Obj> kept = sparse_pages(rng);
  am_collect(1);
  std::uint64_t before = pages_in_use();
  std::size_t hinted = 0, moved = 0;
  // Redis-style passes: move what the hint names, until it names nothing.
  for (int pass = 0; pass < 4; pass++)
    for (Obj& o : kept) {
      if (!am_defrag_hint(o.p)) continue;
      hinted++;
      void* q = am_defrag_move(o.p, kSize);
      if (q != o.p) moved++;
      o.p = q;
    }
  am_collect(1);
  std::uint64_t after = pages_in_use();
  for (const Obj& o : kept)
    ASSERT_EQ(amt::check_pattern(o.p, kSize, o.seed), SIZE_MAX) << "a moved block lost its bytes";
  std::printf("%zu blocks kept, %zu hinted, %zu moved; pages in use %llu -> %llu\n", kept.size(),
              hinted, moved, static_cast<unsigned long long>(before),
              static_cast<unsigned long long>(after));
  EXPECT_GT(moved, kept.size() / 2);
  am_stats_t st;
  am_stats_get(&st);
  EXPECT_EQ(st.defrag_moves - defrag_moves_before, moved) << "the stats count every move";
  // 10% of 32 pages' blocks fit in about 4 pages.
  EXPECT_LE(after * 3, before) << "sparse pages were not given back";
  for (const Obj& o : kept) am_free(o.p);
}

TEST(Defrag, HintIsZeroWhereMovingCannotHelp) {
  EXPECT_EQ(am_defrag_hint(nullptr), 0);
  void* big = am_malloc(1 << 20);  // a large block owns its segment
  EXPECT_EQ(am_defrag_hint(big), 0);
  am_free(big);
  // A lone block in the page its heap allocates from.
  void* p = am_malloc(3000);
  EXPECT_EQ(am_defrag_hint(p), 0);
  EXPECT_EQ(am_defrag_move(p, 3000), p);
  am_free(p);
  // A full page is not sparse.
  std::vector<void*> v;
  for (int i = 0; i < 4096; i++) v.push_back(am_malloc(kSize));
  EXPECT_EQ(am_defrag_hint(v[10]), 0);
  for (void* q : v) am_free(q);
}

TEST(Defrag, NewBlocksGoToTheFullestPages) {
  // Two sparse generations of four pages each: pages of the first keep 50%
  // of their blocks, pages of the second 5%. The second is freed first, so
  // its pages come first in the queue; new blocks should still fill the
  // fuller pages, so that the sparse ones can drain.
  amt::Rng rng(11);
  std::vector<void*> gen1, gen2;
  for (std::size_t i = 0; i < 4 * 1024; i++) gen1.push_back(am_malloc(kSize));
  for (std::size_t i = 0; i < 4 * 1024; i++) gen2.push_back(am_malloc(kSize));
  std::vector<void*> keep1, keep2;
  for (void* p : gen2) (rng.chance(5) ? keep2.push_back(p) : am_free(p));
  for (void* p : gen1) (rng.chance(50) ? keep1.push_back(p) : am_free(p));
  // Which pages (64 KiB slots) hold the sparse generation. The page being
  // allocated from now (where a probe lands) is used up first whatever
  // its fill: it does not count.
  auto page_of = [](void* p) { return reinterpret_cast<std::uintptr_t>(p) >> 16; };
  void* probe = am_malloc(kSize);
  std::vector<std::uintptr_t> pages2;
  for (void* p : gen2)
    if (page_of(p) != page_of(probe)) pages2.push_back(page_of(p));
  std::sort(pages2.begin(), pages2.end());
  pages2.erase(std::unique(pages2.begin(), pages2.end()), pages2.end());
  std::vector<void*> fresh{probe};
  std::size_t into_sparse = 0;
  // About two pages' worth: more than the head page's free blocks.
  for (std::size_t i = 0; i < 2 * 1024; i++) {
    void* p = am_malloc(kSize);
    fresh.push_back(p);
    if (std::binary_search(pages2.begin(), pages2.end(), page_of(p))) into_sparse++;
  }
  std::printf("%zu of %zu new blocks went into the sparse pages\n", into_sparse, fresh.size());
  EXPECT_LT(into_sparse * 8, fresh.size()) << "new blocks went to the sparsest pages";
  for (void* p : fresh) am_free(p);
  for (void* p : keep1) am_free(p);
  for (void* p : keep2) am_free(p);
}
