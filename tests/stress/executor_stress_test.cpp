// Executor-style stress: heaps, coroutine frames and plain am_malloc mixed
// across threads with content checks, and the bounded reuse of memory that
// producers allocate and a thread that only frees gives back.
#include <amalloc/amalloc.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <amalloc/amalloc.hpp>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "amalloc_test_support.h"

namespace {

using u64 = std::uint64_t;
constexpr std::size_t kMiB = std::size_t{1} << 20;

[[noreturn]] void die(const char* what, const void* p, std::size_t n, u64 seed, std::size_t at) {
  std::fprintf(stderr, "executor stress: %s: %p size %zu seed %llx: byte %zu differs\n", what, p, n,
               static_cast<unsigned long long>(seed), at);
  std::abort();
}

void verify(const void* p, std::size_t n, u64 seed, const char* what) {
  std::size_t at = amt::check_pattern(p, n, seed);
  if (at != SIZE_MAX) die(what, p, n, seed, at);
}

// ---- a coroutine with a buffer in its frame ----------------------------

struct task {
  struct promise_type : amalloc::pooled_frame {
    u64 value = 0;
    task get_return_object() noexcept {
      return task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_value(u64 v) noexcept { value = v; }
    void unhandled_exception() noexcept { std::terminate(); }
  };
  std::coroutine_handle<promise_type> h;
};

// Filled when started, checked when resumed (usually on another thread).
template <std::size_t N>
__attribute__((noinline)) task framed(u64 seed) {
  unsigned char buf[N];
  amt::fill_pattern(buf, N, seed);
  co_await std::suspend_always{};
  verify(buf, N, seed, "coroutine frame buffer at resume");
  co_return amt::mix64(seed);
}

using task_maker = task (*)(u64);
constexpr task_maker kMakers[] = {&framed<8>,    &framed<96>,   &framed<400>,  &framed<1200>,
                                  &framed<3000>, &framed<4050>, &framed<5000>, &framed<20000>};

// ---- items that threads allocate, hand over and free ---------------------

enum class Kind : std::uint8_t { malloc, heap, frame, coro };

struct Item {
  Kind kind = Kind::malloc;
  void* p = nullptr;
  std::size_t n = 0;
  u64 seed = 0;
  std::coroutine_handle<task::promise_type> h;
};

std::size_t pick_size(amt::Rng& rng) {
  unsigned r = static_cast<unsigned>(rng.below(1000));
  if (r < 550) return rng.range(0, 256);
  if (r < 900) return rng.range(257, 4096);
  if (r < 990) return rng.range(4097, 65536);
  return rng.range(65537, 400000);
}

Item make_item(amt::Rng& rng, u64 seed, am_heap_t* heap) {
  Item x;
  x.seed = seed;
  unsigned r = static_cast<unsigned>(rng.below(100));
  if (r < 15) {
    x.kind = Kind::coro;
    x.h = kMakers[rng.below(sizeof kMakers / sizeof kMakers[0])](seed).h;
    x.h.resume();  // fills the frame's buffer
    return x;
  }
  x.n = pick_size(rng);
  if (r < 45) {
    x.kind = Kind::malloc;  // from whatever heap the thread has bound now
    x.p = am_malloc(x.n);
  } else if (r < 70) {
    x.kind = Kind::heap;
    x.p = am_heap_malloc(heap, x.n);
  } else {
    x.kind = Kind::frame;
    x.n = std::min<std::size_t>(x.n, 9000);
    x.p = am_frame_alloc(x.n);
  }
  if (!x.p) {
    std::fprintf(stderr, "executor stress: allocation of %zu bytes failed\n", x.n);
    std::abort();
  }
  amt::fill_pattern(x.p, x.n, x.seed);
  return x;
}

void check_item(const Item& x, const char* what) {
  if (x.kind != Kind::coro) verify(x.p, x.n, x.seed, what);
}

void free_item(Item& x) {
  switch (x.kind) {
    case Kind::coro:
      x.h.resume();  // checks the buffer
      if (!x.h.done() || x.h.promise().value != amt::mix64(x.seed)) {
        std::fprintf(stderr, "executor stress: coroutine result wrong\n");
        std::abort();
      }
      x.h.destroy();
      break;
    case Kind::frame:
      verify(x.p, x.n, x.seed, "frame before free");
      am_frame_free(x.p, x.n);
      break;
    default:
      verify(x.p, x.n, x.seed, "block before free");
      am_free(x.p);
  }
}

// Blocks and frames change hands through these slots.
class Exchange {
 public:
  explicit Exchange(std::size_t n) : slots_(n) {
    for (auto& s : slots_) s.store(nullptr);
  }
  Item* swap(Item* x, amt::Rng& rng) {
    return slots_[rng.below(slots_.size())].exchange(x, std::memory_order_acq_rel);
  }
  std::vector<Item*> drain() {
    std::vector<Item*> v;
    for (auto& s : slots_)
      if (Item* x = s.exchange(nullptr, std::memory_order_acq_rel)) v.push_back(x);
    return v;
  }

 private:
  std::vector<std::atomic<Item*>> slots_;
};

struct Counts {
  u64 allocs = 0, frees = 0, handed = 0, received = 0, arena_resets = 0, binds = 0, restarts = 0;
};

void mixed_worker(unsigned id, std::size_t ops, Exchange& ex, Counts& c) {
  amt::Rng rng(9000 + id);
  amalloc::heap exec;   // the executor's heap: bound most of the time
  amalloc::heap arena;  // a per-request arena: reset in one call
  bool bound = false;
  std::vector<Item> live;
  struct ArenaBlock {
    void* p;
    std::size_t n;
    u64 seed;
  };
  std::vector<ArenaBlock> arena_blocks;
  u64 seq = 0;
  auto next_seed = [&] { return (u64{id} << 48) | seq++; };
  auto release_at = [&](std::size_t k) {
    free_item(live[k]);
    live[k] = live.back();
    live.pop_back();
    c.frees++;
  };
  for (std::size_t op = 0; op < ops; op++) {
    if (op % 20000 == 19999) {
      // The executor is replaced: its heap is deleted while blocks of it
      // are still live here and in other threads (they stay valid).
      if (bound) am_heap_bind(nullptr);
      bound = false;
      exec = amalloc::heap();
      c.restarts++;
    }
    unsigned r = static_cast<unsigned>(rng.below(1000));
    if (r < 10) {
      // Bind or unbind the executor heap.
      am_heap_t* prev = am_heap_bind(bound ? nullptr : exec.get());
      if (prev != (bound ? exec.get() : nullptr)) {
        std::fprintf(stderr, "executor stress: am_heap_bind returned %p\n",
                     static_cast<void*>(prev));
        std::abort();
      }
      bound = !bound;
      c.binds++;
    } else if (r < 30) {
      amalloc::executor_idle();
    } else if (r < 130) {
      // The arena: blocks only this thread sees, all dropped at once.
      std::size_t n = static_cast<std::size_t>(rng.range(1, rng.chance(5) ? 100000 : 2000));
      ArenaBlock b{arena.malloc(n), n, next_seed()};
      if (!b.p) {
        std::fprintf(stderr, "executor stress: arena allocation failed\n");
        std::abort();
      }
      amt::fill_pattern(b.p, b.n, b.seed);
      arena_blocks.push_back(b);
      if (arena_blocks.size() >= 2000) {
        for (const ArenaBlock& a : arena_blocks) verify(a.p, a.n, a.seed, "arena block");
        arena_blocks.clear();
        arena.destroy();
        c.arena_resets++;
      }
    } else if (live.empty() || r < 550) {
      live.push_back(make_item(rng, next_seed(), exec.get()));
      c.allocs++;
      if (live.size() > 300) release_at(rng.below(live.size()));
    } else if (r < 750) {
      release_at(rng.below(live.size()));
    } else if (r < 800) {
      // A realloc of a block (possibly allocated by another thread).
      Item& x = live[rng.below(live.size())];
      if (x.kind == Kind::malloc || x.kind == Kind::heap) {
        check_item(x, "block before realloc");
        std::size_t m = pick_size(rng) + 1;
        void* q = am_realloc(x.p, m);
        if (!q) {
          std::fprintf(stderr, "executor stress: realloc to %zu failed\n", m);
          std::abort();
        }
        verify(q, std::min(x.n, m), x.seed, "realloc lost contents");
        x.p = q;
        x.n = m;
        x.kind = Kind::malloc;
        x.seed = next_seed();
        amt::fill_pattern(x.p, x.n, x.seed);
      }
    } else {
      // Hand an item over; free (or keep) whatever was in the slot.
      std::size_t k = rng.below(live.size());
      Item* mine = new Item(live[k]);
      live[k] = live.back();
      live.pop_back();
      c.handed++;
      if (Item* theirs = ex.swap(mine, rng)) {
        c.received++;
        Item got = *theirs;
        delete theirs;
        check_item(got, "item received through the exchange");
        if (rng.chance(60)) {
          free_item(got);
          c.frees++;
        } else {
          live.push_back(got);
        }
      }
    }
  }
  for (Item& x : live) {
    free_item(x);
    c.frees++;
  }
  for (const ArenaBlock& a : arena_blocks) verify(a.p, a.n, a.seed, "arena block at the end");
  arena.destroy();
  if (bound) am_heap_bind(nullptr);
  amalloc::executor_idle();
}

TEST(ExecutorStress, HeapsFramesAndMallocMixedAcrossFourThreads) {
  constexpr unsigned kThreads = 4;
  const std::size_t ops = amt::scaled(800000, 40000);
  const am_stats_t s0 = amt::stats();
  Exchange ex(128);
  std::vector<Counts> counts(kThreads);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (unsigned i = 0; i < kThreads; i++)
    ts.emplace_back(mixed_worker, i, ops, std::ref(ex), std::ref(counts[i]));
  for (auto& t : ts) t.join();
  for (Item* x : ex.drain()) {
    free_item(*x);
    delete x;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Counts total;
  for (const Counts& c : counts) {
    total.allocs += c.allocs;
    total.frees += c.frees;
    total.handed += c.handed;
    total.received += c.received;
    total.arena_resets += c.arena_resets;
    total.binds += c.binds;
    total.restarts += c.restarts;
  }
  am_collect(1);
  const am_stats_t s1 = amt::stats();
  std::printf(
      "%u threads x %zu ops in %.2f s: %llu allocs, %llu handed over, %llu received, %llu arena "
      "resets, %llu binds, %llu heaps replaced\n",
      kThreads, ops, secs, static_cast<unsigned long long>(total.allocs),
      static_cast<unsigned long long>(total.handed),
      static_cast<unsigned long long>(total.received),
      static_cast<unsigned long long>(total.arena_resets),
      static_cast<unsigned long long>(total.binds),
      static_cast<unsigned long long>(total.restarts));
  EXPECT_GT(total.received, 0u);
  EXPECT_GT(total.arena_resets, 0u);
  EXPECT_EQ(s1.bad_frees, s0.bad_frees);
  EXPECT_GT(s1.remote_frees, s0.remote_frees);
  // Everything was freed; the threads' heaps are gone.
  EXPECT_LE(s1.in_use_bytes, s0.in_use_bytes + 4 * kMiB)
      << "in_use_bytes " << s1.in_use_bytes << " after freeing everything (was " << s0.in_use_bytes
      << ")";
}

// Sizes of the producers' blocks: a dozen typical sizes of a server (mostly
// small, some medium, a few large), plus or minus a few bytes. With a few
// size classes per heap, what 16 heaps commit settles quickly.
std::size_t pick_producer_size(amt::Rng& rng) {
  static constexpr std::size_t kSizes[] = {24, 48, 64, 96, 160, 256, 400, 640, 1000, 2000};
  unsigned r = static_cast<unsigned>(rng.below(1000));
  std::size_t n;
  if (r < 900)
    n = kSizes[rng.below(10)];
  else if (r < 990)
    n = rng.chance(50) ? 6000 : 20000;
  else
    n = 150000;
  return n - static_cast<std::size_t>(rng.below(8));
}

// Parks the worker threads while the main thread reads the stats, so that
// every sample is a snapshot of a quiescent allocator (am_stats_get is
// approximate while other threads allocate; see the next test).
class Sampler {
 public:
  explicit Sampler(unsigned threads) : threads_(threads) {}
  // Called by each worker at the top of its loop.
  void checkpoint() {
    if (!pause_.load(std::memory_order_acquire)) return;
    parked_.fetch_add(1, std::memory_order_acq_rel);
    while (pause_.load(std::memory_order_acquire)) std::this_thread::yield();
    parked_.fetch_sub(1, std::memory_order_acq_rel);
  }
  template <class F>
  void with_all_parked(F&& f) {
    pause_.store(true, std::memory_order_release);
    while (parked_.load(std::memory_order_acquire) != threads_) std::this_thread::yield();
    f();
    pause_.store(false, std::memory_order_release);
  }

 private:
  const unsigned threads_;
  std::atomic<bool> pause_{false};
  std::atomic<unsigned> parked_{0};
};

// 16 producers, each an executor with its own bound heap that calls the idle
// point in its loop, allocate blocks and pass them to one thread that only
// frees (and never allocates). The frees must become reusable by the
// producers: committed memory and RSS stay bounded over the run.
TEST(ExecutorStress, SixteenProducersOneFreerMemoryStaysBounded) {
  constexpr unsigned kProducers = 16;
  constexpr std::size_t kBatch = 32;
  constexpr long kMaxOutstanding = 16 * 256;  // blocks allocated and not yet freed
  const auto duration =
      std::chrono::milliseconds(static_cast<long>(std::max(1000.0, 3000.0 * amt::scale())));

  struct Queue {
    std::mutex m;
    std::vector<Item> items;
  };
  std::vector<std::unique_ptr<Queue>> queues;
  for (unsigned i = 0; i < kProducers; i++) queues.push_back(std::make_unique<Queue>());
  std::atomic<long> outstanding{0};
  std::atomic<bool> stop{false};
  std::atomic<unsigned> producers_done{0};
  std::atomic<u64> allocated{0}, freed{0};
  Sampler sampler(kProducers + 1);
  const am_stats_t s0 = amt::stats();

  std::vector<std::thread> producers;
  for (unsigned id = 0; id < kProducers; id++)
    producers.emplace_back([&, id] {
      amalloc::heap h;
      amalloc::heap_scope bound(h);
      amt::Rng rng(id + 1);
      u64 seq = 0;
      std::vector<Item> batch;
      while (!stop.load(std::memory_order_relaxed)) {
        amalloc::executor_idle();  // the top of the executor's loop
        sampler.checkpoint();
        if (outstanding.load(std::memory_order_relaxed) > kMaxOutstanding) {
          std::this_thread::yield();
          continue;
        }
        for (std::size_t i = 0; i < kBatch; i++) {
          Item x;
          x.n = pick_producer_size(rng);
          x.seed = (u64{id} << 48) | seq++;
          x.p = am_malloc(x.n);
          if (!x.p) {
            std::fprintf(stderr, "executor stress: am_malloc(%zu) failed\n", x.n);
            std::abort();
          }
          amt::fill_pattern(x.p, x.n, x.seed);
          batch.push_back(x);
        }
        outstanding.fetch_add(static_cast<long>(kBatch), std::memory_order_relaxed);
        allocated.fetch_add(kBatch, std::memory_order_relaxed);
        std::lock_guard g(queues[id]->m);
        queues[id]->items.insert(queues[id]->items.end(), batch.begin(), batch.end());
        batch.clear();
      }
      producers_done++;
    });
  std::thread freer([&] {
    std::vector<Item> got;
    for (;;) {
      sampler.checkpoint();
      bool last = producers_done.load() == kProducers;  // read before the final pass
      bool any = false;
      for (auto& q : queues) {
        {
          std::lock_guard g(q->m);
          got.swap(q->items);
        }
        if (got.empty()) continue;
        any = true;
        for (const Item& x : got) {
          verify(x.p, x.n, x.seed, "block received by the freer");
          am_free(x.p);
        }
        outstanding.fetch_sub(static_cast<long>(got.size()), std::memory_order_relaxed);
        freed.fetch_add(got.size(), std::memory_order_relaxed);
        got.clear();
      }
      if (last && !any) break;
      if (!any) std::this_thread::yield();
    }
  });

  struct Sample {
    double t;
    u64 committed, rss;
  };
  std::vector<Sample> samples;
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t >= std::chrono::duration<double>(duration).count()) break;
    sampler.with_all_parked([&] {
      samples.push_back({t, amt::stats().committed_bytes, amt::rss_bytes()});
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stop = true;
  for (auto& t : producers) t.join();
  freer.join();
  const am_stats_t s1 = amt::stats();

  const double d = std::chrono::duration<double>(duration).count();
  u64 q2_committed = 0, q4_committed = 0, q2_rss = 0, q4_rss = 0;
  std::size_t q2_n = 0, q4_n = 0;
  for (const Sample& s : samples) {
    if (s.t >= d / 4 && s.t < d / 2) {
      q2_committed = std::max(q2_committed, s.committed);
      q2_rss = std::max(q2_rss, s.rss);
      q2_n++;
    } else if (s.t >= 3 * d / 4) {
      q4_committed = std::max(q4_committed, s.committed);
      q4_rss = std::max(q4_rss, s.rss);
      q4_n++;
    }
  }
  std::printf(
      "%u producers, %.1f s: %llu blocks allocated, %llu freed; committed max %llu KiB (2nd "
      "quarter) %llu KiB (last quarter); RSS max %llu KiB / %llu KiB\n",
      kProducers, d, static_cast<unsigned long long>(allocated.load()),
      static_cast<unsigned long long>(freed.load()),
      static_cast<unsigned long long>(q2_committed >> 10),
      static_cast<unsigned long long>(q4_committed >> 10),
      static_cast<unsigned long long>(q2_rss >> 10), static_cast<unsigned long long>(q4_rss >> 10));
  ASSERT_GT(q2_n, 0u);
  ASSERT_GT(q4_n, 0u);
  EXPECT_EQ(allocated.load(), freed.load());
  EXPECT_GT(allocated.load(), u64{kProducers} * kBatch * 4) << "the producers hardly ran";
  EXPECT_LE(q4_committed, q2_committed + q2_committed / 4 + 8 * kMiB)
      << "committed bytes kept growing: memory freed by the freer is not reused";
  EXPECT_LE(q4_rss, q2_rss + q2_rss / 4 + 8 * kMiB) << "RSS kept growing";
  EXPECT_EQ(s1.bad_frees, s0.bad_frees);
}

// A monitoring thread reads am_stats_get while executor threads allocate
// and free (small and large blocks). The figures may be approximate, but
// never wrapped-around garbage (nothing near 2^64).
TEST(ExecutorStress, StatsReadWhileOtherThreadsAllocate) {
  constexpr unsigned kThreads = 3;
  std::atomic<bool> stop{false};
  std::atomic<u64> allocations{0};
  std::vector<std::thread> ts;
  for (unsigned id = 0; id < kThreads; id++)
    ts.emplace_back([&, id] {
      amalloc::heap h;
      amalloc::heap_scope bound(h);
      amt::Rng rng(id + 40);
      std::vector<Item> live;
      u64 seq = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        Item x;
        x.n = rng.chance(30) ? rng.range(65537, 2 * kMiB) : rng.range(0, 20000);
        x.seed = (u64{id} << 48) | seq++;
        x.p = am_malloc(x.n);
        if (!x.p) std::abort();
        amt::fill_pattern(x.p, std::min<std::size_t>(x.n, 4096), x.seed);
        live.push_back(x);
        allocations.fetch_add(1, std::memory_order_relaxed);
        if (live.size() > 64) {
          std::size_t k = rng.below(live.size());
          verify(live[k].p, std::min<std::size_t>(live[k].n, 4096), live[k].seed,
                 "block before free");
          am_free(live[k].p);
          live[k] = live.back();
          live.pop_back();
        }
        amalloc::executor_idle();
      }
      for (const Item& x : live) am_free(x.p);
    });
  constexpr u64 kAbsurd = u64{1} << 48;                         // more than the address space
  while (allocations.load() < 1000) std::this_thread::yield();  // all running
  const auto duration =
      std::chrono::milliseconds(static_cast<long>(std::max(200.0, 400.0 * amt::scale())));
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t samples = 0, bad = 0;
  am_stats_t worst{};
  while (std::chrono::steady_clock::now() - t0 < duration) {
    samples++;
    am_stats_t s = amt::stats();
    if (s.committed_bytes >= kAbsurd || s.in_use_bytes >= kAbsurd || s.reserved_bytes >= kAbsurd) {
      if (bad++ == 0) worst = s;
    }
  }
  stop = true;
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad, 0u) << bad << " of " << samples << " samples wrapped around, e.g. committed_bytes "
                     << worst.committed_bytes << " in_use_bytes " << worst.in_use_bytes
                     << " reserved_bytes " << worst.reserved_bytes;
}

}  // namespace
