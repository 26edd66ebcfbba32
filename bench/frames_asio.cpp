// Boost.Asio's frame recycling, the same work as frames.cpp: the handler
// (a 200-byte local buffer) is a boost::asio::awaitable<int>, created, run
// to completion and destroyed by a coroutine on an io_context.
//
// Asio allocates awaitable frames from a per-thread recycling cache
// (thread_info_base: 2 slots for frames by default) while the thread runs
// an io_context, and from the global aligned_alloc on a miss; a frame
// destroyed on another thread goes to that thread's cache or, when it is
// full, back to the global allocator. So on one executor this is Asio's own
// recycling, and across two it is mostly the global allocator behind it
// (run this binary under each allocator's LD_PRELOAD, as am_bench_frames).
//
// Names as in frames.cpp: BM_FrameOne/asio and BM_FrameCross/asio.
#include <benchmark/benchmark.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstring>
#include <thread>

#include "frames_common.h"

namespace {

namespace asio = boost::asio;
using bench::Clock;
using bench::count_frames;

__attribute__((noinline)) asio::awaitable<int> handler(int x) {
  char buffer[200];
  memset(buffer, x & 0x7f, sizeof buffer);
  asm volatile("" : : "r"(buffer) : "memory");
  co_return buffer[x % 200] + 1;
}

// One executor: a coroutine on an io_context co_awaits a new handler per
// iteration (the child runs at once and its frame is destroyed when the
// co_await completes).
void BM_AsioOne(benchmark::State& state) {
  asio::io_context ctx;
  long sum = 0;
  Clock::duration wall{};
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        const Clock::time_point start = Clock::now();
        for (auto _ : state) sum += co_await handler(static_cast<int>(sum & 1023));
        wall = Clock::now() - start;
      },
      asio::detached);
  ctx.run();
  benchmark::DoNotOptimize(sum);
  count_frames(state, wall);
}

// Across two executors: a coroutine on the benchmark thread's io_context
// creates the handlers (without running them) and a coroutine on a second
// thread's io_context co_awaits each, so the frame is destroyed there. The
// same blocking ring and timing as frames.cpp's BM_CrossThread.
void BM_AsioCross(benchmark::State& state) {
  bench::BlockingRing<asio::awaitable<int>> ring;
  bench::CoreToCore c2c;
  long sum = 0, expected = 0;
  Clock::time_point first_create, last_destroy;
  std::thread consumer([&] {
    c2c.bounce(1, 0);
    asio::io_context ctx;
    asio::co_spawn(
        ctx,
        [&]() -> asio::awaitable<void> {
          asio::awaitable<int> a;
          while (ring.pop(a)) sum += co_await std::move(a);
          last_destroy = Clock::now();
        },
        asio::detached);
    ctx.run();
    c2c.bounce(1, 1);
  });
  c2c.bounce(0, 0);
  asio::io_context ctx;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        int i = 0;
        first_create = Clock::now();
        for (auto _ : state) {
          const int x = i++ & 1023;
          expected += bench::handler_result(x);
          ring.push(handler(x));
        }
        ring.close();
        co_return;
      },
      asio::detached);
  ctx.run();
  c2c.bounce(0, 1);
  consumer.join();
  bench::finish_cross(state, last_destroy - first_create, sum, expected, ring, c2c);
}

BENCHMARK(BM_AsioOne)->Name("BM_FrameOne/asio")->UseRealTime();
BENCHMARK(BM_AsioCross)->Name("BM_FrameCross/asio")->UseManualTime();

}  // namespace

BENCHMARK_MAIN();
