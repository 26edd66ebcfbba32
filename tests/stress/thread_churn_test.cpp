// Thread churn: many short threads, run a few at a time, each allocating
// about 100 blocks (some freed locally, some left for the main thread, a
// few kept across threads). Memory must not grow with the number of
// threads that have come and gone: no per-thread leak.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"
#include "stress_common.h"

namespace {

using namespace stress;

constexpr std::uint64_t kMiB = 1u << 20;
constexpr int kBatch = 4;
constexpr int kBlocksPerThread = 100;
constexpr int kKeptSlots = 64;

// Blocks that outlive the thread that made them, replaced by later threads.
struct Kept {
  std::mutex m;
  Rec slots[kKeptSlots];
};

std::size_t churn_size(amt::Rng& rng) {
  unsigned r = static_cast<unsigned>(rng.below(100));
  if (r < 70) return rng.range(1, 256);
  if (r < 95) return rng.range(257, 16384);
  if (r < 99) return rng.range(16385, 65536);
  return rng.range(65537, 300000);
}

// One short thread: ~100 blocks; ~60 freed here, ~35 handed to the main
// thread in `handed`, a few swapped into `kept`.
void short_thread(std::uint64_t id, Kept& kept, std::vector<Rec>& handed) {
  amt::Rng rng(id);
  std::vector<Rec> mine;
  mine.reserve(kBlocksPerThread);
  for (int i = 0; i < kBlocksPerThread; ++i) {
    Rec r;
    r.n = churn_size(rng);
    r.seed = (id << 20) | static_cast<std::uint64_t>(i);
    r.p = rng.chance(10) ? am_calloc(1, r.n) : am_malloc(r.n);
    if (!r.p) die("allocation failed in a short thread", r, 0);
    amt::fill_pattern(r.p, r.n, r.seed);
    mine.push_back(r);
    if (rng.chance(30)) {  // some die young
      release(mine.back(), rng);
      mine.pop_back();
    }
  }
  for (const Rec& r : mine) {
    unsigned what = static_cast<unsigned>(rng.below(100));
    if (what < 45) {
      release(r, rng);
    } else if (what < 97) {
      handed.push_back(r);
    } else {
      std::lock_guard<std::mutex> g(kept.m);
      Rec& slot = kept.slots[rng.below(kKeptSlots)];
      if (slot.p) release(slot, rng);  // made by a thread that is gone
      slot = r;
    }
  }
}

struct Sample {
  am_stats_t s;
  std::size_t rss;
};

Sample sample() {
  am_collect(1);
  return {amt::stats(), amt::rss_bytes()};
}

TEST(ThreadChurn, NoPerThreadLeak) {
  const std::size_t total = amt::scaled(10000, 400) / kBatch * kBatch;
  const std::size_t checkpoint = total / 10 / kBatch * kBatch;
  Kept kept;
  amt::Rng rng(1);
  Sample at_start = sample(), at_checkpoint{}, at_end{};
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::vector<Rec>> handed(kBatch);
  for (std::size_t done = 0; done < total; done += kBatch) {
    std::thread ts[kBatch];
    for (int k = 0; k < kBatch; ++k) {
      handed[k].clear();
      handed[k].reserve(kBlocksPerThread);
      ts[k] = std::thread(short_thread,
                          static_cast<std::uint64_t>(done + static_cast<std::size_t>(k) + 1),
                          std::ref(kept), std::ref(handed[k]));
    }
    for (auto& t : ts) t.join();
    // The main thread frees what the (now gone) threads left it.
    for (auto& v : handed)
      for (const Rec& r : v) release(r, rng);
    if (done + kBatch == checkpoint) at_checkpoint = sample();
  }
  at_end = sample();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (Rec& r : kept.slots)
    if (r.p) release(r, rng);

  auto mib = [](std::uint64_t b) { return static_cast<unsigned long long>(b / kMiB); };
  std::printf(
      "%zu threads in %.2f s; committed MiB: start %llu, after %zu threads %llu, after %zu threads "
      "%llu; "
      "reserved MiB %llu -> %llu; RSS MiB %zu (start) %zu -> %zu; heaps created %llu abandoned "
      "%llu\n",
      total, secs, mib(at_start.s.committed_bytes), checkpoint,
      mib(at_checkpoint.s.committed_bytes), total, mib(at_end.s.committed_bytes),
      mib(at_checkpoint.s.reserved_bytes), mib(at_end.s.reserved_bytes), at_start.rss >> 20,
      at_checkpoint.rss >> 20, at_end.rss >> 20,
      static_cast<unsigned long long>(at_end.s.heaps_created - at_start.s.heaps_created),
      static_cast<unsigned long long>(at_end.s.heaps_abandoned - at_start.s.heaps_abandoned));

  EXPECT_LE(at_end.s.committed_bytes, at_checkpoint.s.committed_bytes + 16 * kMiB)
      << "committed memory grows with the number of threads that have exited";
  EXPECT_LE(at_end.s.reserved_bytes, at_checkpoint.s.reserved_bytes + 64 * kMiB)
      << "reserved address space grows with the number of threads that have exited";
  EXPECT_LE(at_end.s.segments, at_checkpoint.s.segments + 8);
  EXPECT_EQ(at_end.s.bad_frees, at_start.s.bad_frees);
  // Every thread exited, so every heap that was made was given up.
  EXPECT_GE(at_end.s.heaps_abandoned - at_start.s.heaps_abandoned, total * 9 / 10);
#if !AMT_SANITIZED
  EXPECT_LE(at_end.rss, at_checkpoint.rss + 16 * kMiB)
      << "RSS grows with the number of threads that have exited";
#endif
}

}  // namespace
