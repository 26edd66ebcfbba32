// am_bench_throughput: Google Benchmark micro-benchmarks of malloc/free.
//
// Linked against Google Benchmark and libc/libstdc++ only (never amalloc, and
// not benchmark_main): the allocator under test is chosen at run time with
// LD_PRELOAD, so every allocator runs the very same code.
//
//   BM_RandomSmall   a working set of 1000 live blocks of 16..512 bytes
//                    (weighted to small sizes); each item frees a random slot
//                    and refills it. 1, 2, ... threads (up to the number of
//                    hardware threads), each with its own working set.
//   BM_CrossThread   producer/consumer pairs: the producer allocates batches
//                    of blocks, the consumer frees them (every free is a
//                    remote free).
//   BM_ReallocGrowth a buffer grown by realloc, x1.5 from 16 bytes to 1 MiB,
//                    touching the new tail each time, then freed.
//   BM_Large         a working set of 16 blocks of 64 KiB..4 MiB (log-uniform),
//                    random replacement, one byte written per 4 KiB page.
//   BM_AltPair/N     malloc(N) then free, one block (the fast path).
//   BM_Batch64/N     64 x malloc(N), then the 64 frees.
//
// Everything random comes from fixed seeds and is drawn before the timed
// loop, so all allocators see the same sequence of requests.
//
// The default minimum time per benchmark is 0.1 s (pass
// --benchmark_min_time=X to change it).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"

namespace {

using bench::hw_threads;
using bench::keep;
using bench::Rng;
using bench::small_size;





// 1, 2, 4, ... up to the number of hardware threads, and that number itself.
void thread_counts(benchmark::internal::Benchmark* b) {
  unsigned hw = hw_threads();
  b->Threads(1);
  b->Threads(2);
  for (unsigned t = 4; t <= hw; t *= 2) b->Threads(int(t));
  if (hw > 2 && (hw & (hw - 1)) != 0) b->Threads(int(hw));
}

// Producer/consumer pairs: 2, 4, ... threads (at least one pair).
void pair_counts(benchmark::internal::Benchmark* b) {
  unsigned hw = hw_threads();
  b->Threads(2);
  for (unsigned t = 4; t <= hw; t *= 2) b->Threads(int(t));
}

// ---------------------------------------------------------------------------

constexpr size_t kSlots = 1000;
constexpr size_t kPlan = 1 << 16;  // pre-drawn (slot, size) pairs, cycled

void BM_RandomSmall(benchmark::State& state) {
  Rng rng(0xA110C000u + uint64_t(state.thread_index()));
  std::vector<uint32_t> plan_slot(kPlan), plan_size(kPlan);
  for (size_t i = 0; i < kPlan; ++i) {
    plan_slot[i] = rng.below(kSlots);
    plan_size[i] = small_size(rng);
  }
  std::vector<void*> slots(kSlots);
  for (auto& s : slots) {
    s = std::malloc(small_size(rng));
    static_cast<char*>(s)[0] = 1;
  }
  size_t i = 0;
  for (auto _ : state) {
    size_t k = i & (kPlan - 1);
    void*& slot = slots[plan_slot[k]];
    std::free(slot);
    void* p = std::malloc(plan_size[k]);
    static_cast<char*>(p)[0] = char(i);
    keep(p);
    slot = p;
    ++i;
  }
  for (void* s : slots) std::free(s);
  state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(BM_RandomSmall)->Apply(thread_counts)->UseRealTime();

// ---------------------------------------------------------------------------

// A single-producer single-consumer ring of batches of blocks.
constexpr unsigned kBatch = 64;
constexpr unsigned kRing = 64;  // batches in flight at most
struct alignas(64) Channel {
  struct Slot {
    void* blocks[kBatch];
  };
  alignas(64) std::atomic<uint64_t> head{0};  // next batch to fill (producer)
  alignas(64) std::atomic<uint64_t> tail{0};  // next batch to drain (consumer)
  Slot ring[kRing];
};
constexpr unsigned kMaxPairs = 64;
Channel g_channels[kMaxPairs];

void spin_pause(unsigned& spins) {
  if (++spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  } else {
    std::this_thread::yield();
  }
}

void BM_CrossThread(benchmark::State& state) {
  const int ti = state.thread_index();
  const unsigned pair = unsigned(ti / 2);
  if (pair >= kMaxPairs) {
    state.SkipWithError("too many threads");
    for (auto _ : state) {
    }
    return;
  }
  // An odd thread count leaves the last thread without a partner: it idles.
  const bool lone = (ti % 2 == 0) && (ti + 1 >= state.threads());
  Channel& ch = g_channels[pair];
  const bool producer = (ti % 2 == 0);
  uint32_t sizes[kBatch];
  Rng rng(0xC0FFEE00u + pair);
  for (auto& s : sizes) s = small_size(rng);

  for (auto _ : state) {
    if (lone) continue;
    if (producer) {
      uint64_t h = ch.head.load(std::memory_order_relaxed);
      unsigned spins = 0;
      while (h - ch.tail.load(std::memory_order_acquire) >= kRing) spin_pause(spins);
      Channel::Slot& slot = ch.ring[h % kRing];
      for (unsigned j = 0; j < kBatch; ++j) {
        void* p = std::malloc(sizes[j]);
        static_cast<char*>(p)[0] = char(j);
        slot.blocks[j] = p;
      }
      ch.head.store(h + 1, std::memory_order_release);
    } else {
      uint64_t t = ch.tail.load(std::memory_order_relaxed);
      unsigned spins = 0;
      while (ch.head.load(std::memory_order_acquire) == t) spin_pause(spins);
      Channel::Slot& slot = ch.ring[t % kRing];
      for (unsigned j = 0; j < kBatch; ++j) std::free(slot.blocks[j]);
      ch.tail.store(t + 1, std::memory_order_release);
    }
  }
  // Both threads of a pair run the same number of iterations, so the ring is
  // empty here: every batch produced has been consumed.
  if (!lone && producer) state.SetItemsProcessed(int64_t(state.iterations()) * kBatch);
}
BENCHMARK(BM_CrossThread)->Apply(pair_counts)->UseRealTime();

// ---------------------------------------------------------------------------

void BM_ReallocGrowth(benchmark::State& state) {
  constexpr size_t kMax = size_t(1) << 20;
  int64_t reallocs = 0;
  for (auto _ : state) {
    size_t size = 16;
    char* p = static_cast<char*>(std::malloc(size));
    p[0] = 1;
    while (size < kMax) {
      size_t grown = size + size / 2;
      p = static_cast<char*>(std::realloc(p, grown));
      std::memset(p + size, 0x5A, std::min<size_t>(grown - size, 64));
      p[grown - 1] = 2;
      size = grown;
      ++reallocs;
    }
    keep(p);
    std::free(p);
  }
  state.SetItemsProcessed(reallocs);
}
BENCHMARK(BM_ReallocGrowth);

// ---------------------------------------------------------------------------

void BM_Large(benchmark::State& state) {
  constexpr size_t kLive = 16;
  constexpr size_t kLargePlan = 4096;
  Rng rng(0x1A26E000u);
  // log-uniform in [64 KiB, 4 MiB]: 2^16 .. 2^22.
  auto large_size = [&rng]() {
    unsigned shift = 16 + rng.below(6);
    size_t base = size_t(1) << shift;
    return base + size_t(rng.below(uint32_t(base)));
  };
  std::vector<uint32_t> plan_slot(kLargePlan);
  std::vector<size_t> plan_size(kLargePlan);
  for (size_t i = 0; i < kLargePlan; ++i) {
    plan_slot[i] = rng.below(kLive);
    plan_size[i] = std::min<size_t>(large_size(), size_t(4) << 20);
  }
  std::vector<void*> live(kLive, nullptr);
  size_t i = 0;
  for (auto _ : state) {
    size_t k = i % kLargePlan;
    void*& slot = live[plan_slot[k]];
    std::free(slot);
    size_t n = plan_size[k];
    char* p = static_cast<char*>(std::malloc(n));
    for (size_t off = 0; off < n; off += 4096) p[off] = 1;
    p[n - 1] = 1;
    keep(p);
    slot = p;
    ++i;
  }
  for (void* p : live) std::free(p);
  state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(BM_Large);

// ---------------------------------------------------------------------------

void BM_AltPair(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(size);
    keep(p);
    std::free(p);
  }
  state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(BM_AltPair)->Arg(16)->Arg(256);

void BM_Batch64(benchmark::State& state) {
  const size_t size = size_t(state.range(0));
  void* blocks[64];
  for (auto _ : state) {
    for (auto& b : blocks) {
      b = std::malloc(size);
      keep(b);
    }
    for (void* b : blocks) std::free(b);
    keep(blocks);
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * 64);
}
BENCHMARK(BM_Batch64)->Arg(16)->Arg(256);

}  // namespace

int main(int argc, char** argv) {
  // Default to a short minimum time; a --benchmark_min_time given on the
  // command line comes later in argv and wins.
  std::vector<char*> args;
  std::string min_time = "--benchmark_min_time=0.1";
  args.push_back(argv[0]);
  args.push_back(min_time.data());
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  int n = int(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
