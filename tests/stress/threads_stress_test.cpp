// Multi-threaded stress: random sizes, patterns checked before every free
// and realloc, a good fraction of blocks freed (or realloc'd) by another
// thread than the one that allocated them.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"
#include "stress_common.h"

namespace {

using namespace stress;

constexpr std::uint64_t kMiB = 1u << 20;

unsigned worker_count() {
  unsigned hw = std::thread::hardware_concurrency();
  return std::clamp(hw, 2u, 8u);
}

// Slots through which threads hand blocks to each other.
class Exchange {
 public:
  explicit Exchange(std::size_t n) : slots_(n) {
    for (auto& s : slots_) s.store(nullptr);
  }
  // Puts `r` in a random slot and returns what was there (or nullptr).
  Rec* swap(Rec* r, amt::Rng& rng) {
    return slots_[rng.below(slots_.size())].exchange(r, std::memory_order_acq_rel);
  }
  std::vector<Rec*> drain() {
    std::vector<Rec*> v;
    for (auto& s : slots_)
      if (Rec* r = s.exchange(nullptr, std::memory_order_acq_rel)) v.push_back(r);
    return v;
  }

 private:
  std::vector<std::atomic<Rec*>> slots_;
};

struct WorkerStats {
  std::uint64_t allocs = 0, frees = 0, reallocs = 0, handed = 0, received = 0;
};

void worker(unsigned id, std::size_t ops, Exchange& ex, WorkerStats& st) {
  amt::Rng rng(1000 + id);
  std::vector<Rec> live;
  const std::size_t max_live = 300;
  std::uint64_t counter = 0;
  auto next_seed = [&] { return (std::uint64_t{id} << 40) | counter++; };
  for (std::size_t op = 0; op < ops; ++op) {
    unsigned r = static_cast<unsigned>(rng.below(100));
    if (live.empty() || r < 45) {
      live.push_back(allocate(rng, next_seed()));
      ++st.allocs;
      if (live.size() > max_live) {
        std::size_t k = rng.below(live.size());
        release(live[k], rng);
        ++st.frees;
        live[k] = live.back();
        live.pop_back();
      }
    } else if (r < 68) {
      std::size_t k = rng.below(live.size());
      release(live[k], rng);
      ++st.frees;
      live[k] = live.back();
      live.pop_back();
    } else if (r < 78) {
      reallocate(live[rng.below(live.size())], rng, next_seed());
      ++st.reallocs;
    } else if (r < 96) {
      // Hand a block to whichever thread next visits the slot.
      std::size_t k = rng.below(live.size());
      Rec* mine = new Rec(live[k]);
      live[k] = live.back();
      live.pop_back();
      ++st.handed;
      if (Rec* theirs = ex.swap(mine, rng)) {
        ++st.received;
        Rec got = *theirs;
        delete theirs;
        verify(got, "corrupted in exchange");
        unsigned what = static_cast<unsigned>(rng.below(4));
        if (what < 2) {
          release(got, rng);  // a cross-thread free (usually)
          ++st.frees;
        } else {
          if (what == 2) {
            reallocate(got, rng, next_seed());  // a cross-thread realloc
            ++st.reallocs;
          }
          live.push_back(got);  // freed later by this thread
        }
      }
    } else {
      const Rec& x = live[rng.below(live.size())];
      if (am_usable_size(x.p) < x.n || am_owns(x.p) != 1) die("usable size / owns", x, 0);
    }
  }
  for (const Rec& x : live) {
    release(x, rng);
    ++st.frees;
  }
}

void run_stress(unsigned threads, std::size_t ops_per_thread) {
  am_stats_t s0 = amt::stats();
  Exchange ex(256);
  std::vector<WorkerStats> st(threads);
  std::vector<std::thread> ts;
  auto t0 = std::chrono::steady_clock::now();
  for (unsigned i = 0; i < threads; ++i)
    ts.emplace_back(worker, i, ops_per_thread, std::ref(ex), std::ref(st[i]));
  for (auto& t : ts) t.join();
  amt::Rng rng(1);
  for (Rec* r : ex.drain()) {
    release(*r, rng);
    delete r;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WorkerStats total;
  for (auto& s : st) {
    total.allocs += s.allocs;
    total.frees += s.frees;
    total.reallocs += s.reallocs;
    total.handed += s.handed;
    total.received += s.received;
  }
  am_collect(1);
  am_stats_t s1 = amt::stats();
  std::printf(
      "%u threads x %zu ops in %.2f s: %llu allocs, %llu reallocs, %llu handed over, remote frees "
      "%llu\n",
      threads, ops_per_thread, secs, static_cast<unsigned long long>(total.allocs),
      static_cast<unsigned long long>(total.reallocs),
      static_cast<unsigned long long>(total.handed),
      static_cast<unsigned long long>(s1.remote_frees - s0.remote_frees));
  EXPECT_GT(total.received, 0u);
  EXPECT_GT(s1.remote_frees, s0.remote_frees) << "no remote frees counted";
  EXPECT_EQ(s1.bad_frees, s0.bad_frees);
  // Everything was freed; blocks of exited threads must not stay counted.
  EXPECT_LE(s1.in_use_bytes, s0.in_use_bytes + 4 * kMiB)
      << "in_use_bytes " << s1.in_use_bytes << " after freeing everything (was " << s0.in_use_bytes
      << ")";
}

TEST(ThreadStress, RandomSizesCrossThreadFrees) {
  run_stress(worker_count(), amt::scaled(1000000, 5000));
}

TEST(ThreadStress, Oversubscribed8Threads) {
  run_stress(8, amt::scaled(200000, 2000));
}

// A producer that only allocates and a consumer that only frees (the
// logger / completion-thread pattern): the producer must reuse the memory
// the consumer frees, so committed memory stays bounded.
TEST(ThreadStress, ProducerConsumerMemoryIsReused) {
  constexpr std::size_t kRing = 1 << 14;
  std::vector<std::atomic<void*>> ring(kRing);
  for (auto& s : ring) s.store(nullptr);
  std::atomic<std::size_t> head{0}, tail{0};
  const std::size_t total = amt::scaled(4000000, 200000);
  am_stats_t s0 = amt::stats();
  std::atomic<std::uint64_t> max_committed{0};
  std::thread consumer([&] {
    std::size_t got = 0;
    while (got < total) {
      std::size_t t = tail.load(std::memory_order_relaxed);
      if (t == head.load(std::memory_order_acquire)) {
        std::this_thread::yield();
        continue;
      }
      void* p = ring[t % kRing].load(std::memory_order_relaxed);
      if (static_cast<std::uint64_t*>(p)[0] != t || static_cast<std::uint64_t*>(p)[5] != ~t) {
        std::fprintf(stderr, "producer/consumer: block %zu corrupted\n", t);
        std::abort();
      }
      am_free(p);
      tail.store(t + 1, std::memory_order_release);
      ++got;
    }
  });
  for (std::size_t i = 0; i < total; ++i) {
    while (i - tail.load(std::memory_order_acquire) >= kRing) std::this_thread::yield();
    std::uint64_t* p = static_cast<std::uint64_t*>(am_malloc(48));
    if (!p) {
      std::fprintf(stderr, "producer/consumer: am_malloc(48) failed\n");
      std::abort();
    }
    p[0] = i;
    p[5] = ~std::uint64_t{i};
    ring[i % kRing].store(p, std::memory_order_relaxed);
    head.store(i + 1, std::memory_order_release);
    if (i % 65536 == 0) {
      std::uint64_t c = amt::stats().committed_bytes;
      if (c > max_committed.load()) max_committed.store(c);
    }
  }
  consumer.join();
  std::uint64_t growth =
      max_committed.load() > s0.committed_bytes ? max_committed.load() - s0.committed_bytes : 0;
  std::printf("%zu blocks of 48 bytes through a ring of %zu: committed grew by at most %llu KiB\n",
              total, kRing, static_cast<unsigned long long>(growth >> 10));
  // In flight: at most 16384 x 48 bytes (< 1 MiB); 4M blocks would be 192 MiB.
  EXPECT_LT(growth, 64 * kMiB) << "memory freed by the consumer is not reused by the producer";
}

}  // namespace
