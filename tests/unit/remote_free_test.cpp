// Frees from other threads than the owner: a page on the owner's full list
// that receives remote frees comes back to its queue; and a remote freer
// never touches a page after its push, even when the owner collects the
// block at once, empties the page and unmaps the segment (segment cache
// off), which would fault if it did.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "amalloc/amalloc.h"
#include "amalloc_test_support.h"
#include "gtest/gtest.h"

namespace {

constexpr std::size_t kBlock = 1024;  // 64 to a 64 KiB page

TEST(RemoteFree, FullPageComesBackAfterRemoteFrees) {
  std::thread owner([] {
    // Fill at least two pages, so that the first ones are on the full list.
    std::vector<void*> first;
    for (int i = 0; i < 200; i++) first.push_back(am_malloc(kBlock));
    am_stats_t before;
    am_stats_get(&before);
    std::thread([&] {
      for (void* p : first) am_free(p);
    }).join();
    // Every block came back through a remote push: the next allocations
    // must use those pages again (after the rest of the current page), not
    // take new ones, which they would if the full pages stayed full.
    std::set<void*> freed(first.begin(), first.end());
    std::vector<void*> again;
    std::size_t reused = 0;
    for (int i = 0; i < 200; i++) {
      void* p = am_malloc(kBlock);
      reused += freed.count(p);
      again.push_back(p);
    }
    am_stats_t after;
    am_stats_get(&after);
    EXPECT_GE(reused, 200u - 64) << "remote frees into full pages were not reused";
    EXPECT_LE(after.pages_in_use, before.pages_in_use);
    for (void* p : again) am_free(p);
  });
  owner.join();
}

// A remote list's word counts its blocks, and the owner's count of used
// blocks comes from it: taken without a walk (the page's own list empty),
// left waiting at the idle point (own list not empty, page not emptied),
// and spliced onto a non-empty own list (am_collect). A count too high
// would empty a page that still holds blocks (handed out again while
// live); one too low would keep a page whose blocks are all free.
TEST(RemoteFree, CountedListsKeepEveryPageExact) {
  std::thread([] {
    constexpr std::size_t kN = 8 * 64;  // eight pages of 1 KiB blocks
    am_free(am_malloc(kBlock));         // this thread's heap exists
    am_collect(1);
    am_stats_t before;
    am_stats_get(&before);
    auto seed = [](void* p) { return reinterpret_cast<std::uintptr_t>(p); };
    std::vector<void*> b;
    for (std::size_t i = 0; i < kN; i++) {
      b.push_back(am_malloc(kBlock));
      amt::fill_pattern(b.back(), kBlock, seed(b.back()));
    }
    // A third freed here, a third by another thread; a third stays live.
    for (std::size_t i = 0; i < kN; i += 3) am_free(b[i]);
    std::thread([&] {
      for (std::size_t i = 1; i < kN; i += 3) am_free(b[i]);
    }).join();
    am_executor_idle();
    std::set<void*> live;
    for (std::size_t i = 2; i < kN; i += 3) live.insert(b[i]);
    std::vector<void*> again;
    for (std::size_t i = 0; i < kN - live.size(); i++) {
      again.push_back(am_malloc(kBlock));
      EXPECT_EQ(live.count(again.back()), 0u) << "a live block was handed out again";
      amt::fill_pattern(again.back(), kBlock, seed(again.back()));
    }
    for (void* p : live) EXPECT_EQ(amt::check_pattern(p, kBlock, seed(p)), SIZE_MAX);
    for (void* p : again) EXPECT_EQ(amt::check_pattern(p, kBlock, seed(p)), SIZE_MAX);
    std::thread([&] {
      for (void* p : live) am_free(p);
      for (void* p : again) am_free(p);
    }).join();
    am_executor_idle();
    am_collect(1);
    am_stats_t after;
    am_stats_get(&after);
    EXPECT_LE(after.pages_in_use, before.pages_in_use) << "pages whose blocks are all free stayed";
  }).join();
}

// The owner hands batches of blocks to freer threads and collects right
// away, so that pages empty (and, with no segment cache, segments unmap)
// while the last freer may still be inside am_free.
int freer_race() {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int>(1500 * amt::scale()));
  constexpr int kFreers = 4;
  constexpr int kBatch = 256;
  std::mutex mu;
  std::vector<void*> pending;
  std::atomic<long> freed{0};
  std::atomic<bool> stop{false};
  std::atomic<long> bad{0};
  std::vector<std::thread> freers;
  for (int t = 0; t < kFreers; t++)
    freers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        void* p = nullptr;
        {
          std::lock_guard<std::mutex> g(mu);
          if (!pending.empty()) {
            p = pending.back();
            pending.pop_back();
          }
        }
        if (!p) {
          std::this_thread::yield();
          continue;
        }
        if (amt::check_pattern(p, kBlock, reinterpret_cast<std::uintptr_t>(p)) != SIZE_MAX) bad++;
        am_free(p);
        freed.fetch_add(1, std::memory_order_release);
      }
    });
  long handed = 0, rounds = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> g(mu);
      for (int i = 0; i < kBatch; i++) {
        void* p = am_malloc(kBlock);
        if (!p) return 2;
        amt::fill_pattern(p, kBlock, reinterpret_cast<std::uintptr_t>(p));
        pending.push_back(p);
      }
    }
    handed += kBatch;
    // Collect while the freers push: the page empties under them.
    while (freed.load(std::memory_order_acquire) < handed) am_collect(1);
    am_collect(1);
    rounds++;
  }
  stop = true;
  for (auto& t : freers) t.join();
  am_stats_t s;
  am_stats_get(&s);
  std::printf("rounds %ld bad %ld segments %llu\n", rounds, bad.load(),
              static_cast<unsigned long long>(s.segments));
  return bad.load() == 0 ? 0 : 1;
}

AMT_SCENARIO(remote_free_release_race) { return freer_race(); }

TEST(RemoteFree, FreerNeverTouchesAPageAfterItsPush) {
  auto c = amt::run_scenario("remote_free_release_race",
                             {{"AMALLOC_SEGMENT_CACHE", "0"}, {"AMALLOC_PURGE_DELAY", "0"}});
  EXPECT_TRUE(c.exited_ok()) << c.describe();
}

}  // namespace
