// Coroutine frames: create + resume + destroy, on one executor (thread) and
// across two (created on a producer, destroyed on a consumer that a
// blocking ring hands them to), for three frame sources:
//   global    the global operator new (glibc, or whichever allocator is
//             LD_PRELOADed: run this binary under each),
//   pools     amalloc::pooled_frame (amalloc's frame pools, from
//             amalloc_core: they work whatever the global allocator is),
//   list      an unsynchronised thread-local exact-size free list (the
//             floor on one thread; the pathological case across threads:
//             the consumer's list grows while the producer's stays empty,
//             so every frame is a new global allocation).
// Each frame holds a 200-byte local buffer, like a small request handler.
// frames_asio.cpp does the same with Boost.Asio's awaitable frames.
#include <benchmark/benchmark.h>
#include <dlfcn.h>

#include <amalloc/amalloc.hpp>
#include <chrono>
#include <coroutine>
#include <cstring>
#include <thread>
#include <type_traits>

#include "frames_common.h"

namespace {

// ---- the naive thread-local list ----------------------------------------
struct NaiveList {
  void* head = nullptr;
  ~NaiveList() {
    while (head) {
      void* next = *static_cast<void**>(head);
      ::operator delete(head);
      head = next;
    }
  }
};
thread_local NaiveList t_naive;

struct NaiveFrame {
  static void* operator new(std::size_t n) {
    if (void* p = t_naive.head) {
      t_naive.head = *static_cast<void**>(p);
      return p;
    }
    return ::operator new(n);
  }
  static void operator delete(void* p, std::size_t) noexcept {
    *static_cast<void**>(p) = t_naive.head;
    t_naive.head = p;
  }
};

struct GlobalFrame {};

// What a side of the cross-thread ring calls when it runs out of work: the
// idle point of the allocator its frames come from. The pools' is
// amalloc::executor_idle (the amalloc_core linked in here). The global
// operator new's is libamalloc.so's when that is preloaded: it is a second,
// separate engine, found after this program in the lookup order (RTLD_NEXT);
// the other allocators have none.
template <class Base>
void (*idle_point())() {
  if constexpr (std::is_same_v<Base, amalloc::pooled_frame>) {
    return [] { amalloc::executor_idle(); };
  } else if constexpr (std::is_same_v<Base, GlobalFrame>) {
    static void (*const preloaded)() =
        reinterpret_cast<void (*)()>(dlsym(RTLD_NEXT, "am_executor_idle"));
    return preloaded;
  } else {
    return nullptr;
  }
}

template <class Base>
struct Task {
  struct promise_type : Base {
    int value = 0;
    Task get_return_object() {
      return Task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_value(int v) { value = v; }
    void unhandled_exception() { std::terminate(); }
  };
  std::coroutine_handle<promise_type> h;
};

template <class Base>
__attribute__((noinline)) Task<Base> handler(int x) {
  char buffer[200];
  memset(buffer, x & 0x7f, sizeof buffer);
  asm volatile("" : : "r"(buffer) : "memory");
  co_return buffer[x % 200] + 1;
}

using bench::Clock;
using bench::count_frames;

// The pools' counters summed over every frame size (only the handler's size
// has traffic here), to tell how many creations missed the pools.
am_frame_stats_t pool_totals() {
  am_frame_stats_t sum{};
  for (size_t size = 16; size <= 4096; size += 16) {
    am_frame_stats_t s;
    am_frame_stats(size, &s);
    sum.hits += s.hits;
    sum.misses += s.misses;
    sum.remote_frees += s.remote_frees;
  }
  return sum;
}

// For the pools: the share of creations that missed them (and went to
// amalloc_core's malloc) during this run.
template <class Base>
struct PoolMisses {
  am_frame_stats_t before = pool_totals();
  void report(benchmark::State& state) {
    if constexpr (std::is_same_v<Base, amalloc::pooled_frame>) {
      const am_frame_stats_t after = pool_totals();
      const double misses = static_cast<double>(after.misses - before.misses);
      const double all = misses + static_cast<double>(after.hits - before.hits);
      state.counters["pool_miss_pct"] = all > 0 ? 100 * misses / all : 0;
    }
  }
};

template <class Base>
void BM_SameThread(benchmark::State& state) {
  PoolMisses<Base> pool_misses;
  int sum = 0;
  const Clock::time_point start = Clock::now();
  for (auto _ : state) {
    Task<Base> t = handler<Base>(static_cast<int>(sum & 1023));
    t.h.resume();
    sum += t.h.promise().value;
    t.h.destroy();
  }
  const Clock::time_point end = Clock::now();
  benchmark::DoNotOptimize(sum);
  count_frames(state, end - start);
  pool_misses.report(state);
}

// Across two executors: the producer (the benchmark thread) creates frames
// and hands them over a blocking ring to a consumer thread, which resumes
// each to completion and destroys it there. The time is from the first
// creation to the last destruction (manual time), so a consumer that lags
// cannot hide work after the producer's loop ends.
template <class Base>
void BM_CrossThread(benchmark::State& state) {
  using Handle = std::coroutine_handle<typename Task<Base>::promise_type>;
  PoolMisses<Base> pool_misses;
  bench::BlockingRing<Handle> ring(idle_point<Base>());
  bench::CoreToCore c2c;
  long sum = 0;
  Clock::time_point last_destroy;
  std::thread consumer([&] {
    c2c.bounce(1, 0);
    Handle h;
    while (ring.pop(h)) {
      h.resume();
      sum += h.promise().value;
      h.destroy();
    }
    last_destroy = Clock::now();
    c2c.bounce(1, 1);
  });
  c2c.bounce(0, 0);
  int i = 0;
  long expected = 0;
  const Clock::time_point first_create = Clock::now();
  for (auto _ : state) {
    const int x = i++ & 1023;
    expected += bench::handler_result(x);
    ring.push(handler<Base>(x).h);
  }
  ring.close();
  c2c.bounce(0, 1);
  consumer.join();
  bench::finish_cross(state, last_destroy - first_create, sum, expected, ring, c2c);
  pool_misses.report(state);
}

// The idle point of an executor with nothing to do (it has a heap and a
// frame pool, as a real one would).
void BM_IdleNothingToDo(benchmark::State& state) {
  am_frame_free(am_frame_alloc(64), 64);
  am_free(am_malloc(64));
  for (auto _ : state) amalloc::executor_idle();
  state.SetItemsProcessed(state.iterations());
}

// Names: BM_FrameOne/SOURCE (one executor) and BM_FrameCross/SOURCE (across
// two); scripts/compare and am_bench_frames_asio use the same scheme.
BENCHMARK(BM_IdleNothingToDo);
BENCHMARK_TEMPLATE(BM_SameThread, GlobalFrame)->Name("BM_FrameOne/global")->UseRealTime();
BENCHMARK_TEMPLATE(BM_SameThread, amalloc::pooled_frame)->Name("BM_FrameOne/pools")->UseRealTime();
BENCHMARK_TEMPLATE(BM_SameThread, NaiveFrame)->Name("BM_FrameOne/list")->UseRealTime();
BENCHMARK_TEMPLATE(BM_CrossThread, GlobalFrame)->Name("BM_FrameCross/global")->UseManualTime();
BENCHMARK_TEMPLATE(BM_CrossThread, amalloc::pooled_frame)
    ->Name("BM_FrameCross/pools")
    ->UseManualTime();
BENCHMARK_TEMPLATE(BM_CrossThread, NaiveFrame)->Name("BM_FrameCross/list")->UseManualTime();

}  // namespace

BENCHMARK_MAIN();
