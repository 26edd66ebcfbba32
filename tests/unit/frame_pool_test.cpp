// Coroutine-frame pools: C API, a real C++20 coroutine whose promise uses
// amalloc::pooled_frame, frames destroyed on another thread going home,
// the allocator-aware form, and the stats report.
#include <amalloc/amalloc.h>
#include <gtest/gtest.h>

#include <amalloc/amalloc.hpp>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"

namespace {

// A minimal lazily started task: created suspended, resumed once, and
// destroyed by whoever holds it.
struct task {
  struct promise_type : amalloc::pooled_frame {
    int value = 0;
    task get_return_object() {
      return task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    void return_value(int v) { value = v; }
    void unhandled_exception() { std::terminate(); }
  };
  std::coroutine_handle<promise_type> h;
};

task compute(int x) {
  char buffer[200];  // a frame of a few hundred bytes, like a real handler's
  memset(buffer, x & 0xff, sizeof buffer);
  co_return x * 2 + buffer[7];
}

// Out of line, so that the compiler cannot elide the frame allocation
// (clang puts frames of coroutines that do not escape on the stack).
__attribute__((noinline)) task make_task(int x) { return compute(x); }

task compute_in(std::allocator_arg_t, const amalloc::heap&, int x) { co_return x + 1; }
task compute_std(std::allocator_arg_t, std::allocator<int>, int x) { co_return x + 2; }

TEST(FramePool, CApiRecyclesExactSizes) {
  void* a = am_frame_alloc(200);
  ASSERT_NE(a, nullptr);
  memset(a, 1, 200);
  am_frame_free(a, 200);
  void* b = am_frame_alloc(200);
  EXPECT_EQ(a, b) << "LIFO: the frame just freed comes back";
  am_frame_free(b, 200);
  void* big = am_frame_alloc(100000);  // beyond the pooled sizes
  ASSERT_NE(big, nullptr);
  memset(big, 2, 100000);
  am_frame_free(big, 100000);
}

TEST(FramePool, CoroutineFramesComeFromThePool) {
  for (int i = 0; i < 1000; i++) {
    task t = make_task(i);
    EXPECT_EQ(am_owns(t.h.address()), 1);
    t.h.resume();
    EXPECT_EQ(t.h.promise().value, i * 2 + static_cast<char>(i & 0xff));
    t.h.destroy();
  }
}

TEST(FramePool, FramesDestroyedOnAnotherThreadGoHome) {
  // A producer creates frames; a consumer resumes and destroys them. The
  // consumer's idle point sends them home in batches; the producer reuses
  // them instead of allocating new ones.
  constexpr int kFrames = 20000;
  std::mutex m;
  std::deque<task> queue;
  std::atomic<bool> done{false};
  std::atomic<long> sum{0};
  std::thread consumer([&] {
    for (;;) {
      task t{};
      {
        std::lock_guard g(m);
        if (!queue.empty()) {
          t = queue.front();
          queue.pop_front();
        }
      }
      if (t.h) {
        t.h.resume();
        sum += t.h.promise().value;
        t.h.destroy();
      } else if (done) {
        break;
      } else {
        amalloc::executor_idle();
        std::this_thread::yield();
      }
    }
    amalloc::executor_idle();
  });
  for (int i = 0; i < kFrames; i++) {
    task t = make_task(1);
    std::lock_guard g(m);
    queue.push_back(t);
  }
  done = true;
  consumer.join();
  EXPECT_EQ(sum.load(), long{kFrames} * (2 + 1));
  // The frames are home now: allocating as many again must hit the pool.
  std::string report = amt::capture_stderr([] { am_stats_print(); });
  EXPECT_NE(report.find("frame pools"), std::string::npos) << report;
  std::string json = amt::capture_stderr([] { am_stats_print_json(); });
  EXPECT_NE(json.find("\"frame_pools\":[{\"size\":"), std::string::npos) << json;
  EXPECT_EQ(json.find('\n'), json.size() - 1) << "one line of JSON";
  am_frame_stats_t before;
  am_frame_stats(sizeof(void*) * 40, &before);  // any size: just the call
  // The frames came home: allocating again on this thread hits the pool.
  std::coroutine_handle<task::promise_type> probe = make_task(3).h;
  size_t frame_size = 0;
  (void)frame_size;
  probe.destroy();
  am_frame_stats_t s;
  uint64_t remote = 0, hits = 0;
  for (size_t size = 16; size <= 4096; size += 16) {
    am_frame_stats(size, &s);
    remote += s.remote_frees;
    hits += s.hits;
  }
  EXPECT_GE(remote, uint64_t{kFrames} * 9 / 10)
      << "frames destroyed by the consumer count as remote frees";
  EXPECT_GT(hits, 0u);
}

TEST(FramePool, AllocatorAwareCoroutines) {
  amalloc::heap h;
  task a = compute_in(std::allocator_arg, h, 41);
  a.h.resume();
  EXPECT_EQ(a.h.promise().value, 42);
  a.h.destroy();
  task b = compute_std(std::allocator_arg, std::allocator<int>(), 40);
  b.h.resume();
  EXPECT_EQ(b.h.promise().value, 42);
  b.h.destroy();
}

TEST(FramePool, ThreadsThatExitGiveTheirFramesBack) {
  for (int round = 0; round < 50; round++) {
    std::vector<void*> kept;
    std::thread([&] {
      for (int i = 0; i < 100; i++) {
        void* f = am_frame_alloc(64 + i % 5 * 16);
        am_frame_free(f, 64 + i % 5 * 16);
      }
      for (int i = 0; i < 10; i++) kept.push_back(am_frame_alloc(96));
    }).join();
    // Freed here after their pool's thread exited: back to amalloc.
    for (void* f : kept) am_frame_free(f, 96);
  }
  EXPECT_EQ(amt::bad_frees_since_mark(), 0u);
}

// Frames pooled while an arena is bound come from the thread's default
// heap: destroying the arena must not free them under the pool.
TEST(FramePool, PooledFramesSurviveTheDestroyOfABoundHeap) {
  std::thread([] {
    am_frame_free(am_frame_alloc(32), 32);  // the pool's record, before binding
    amalloc::heap arena;
    void* f[8];
    {
      amalloc::heap_scope scope(arena);
      for (void*& x : f) x = am_frame_alloc(200);  // misses: fresh frames
      for (void* x : f) am_frame_free(x, 200);     // into this thread's pool
    }
    arena.destroy();
    for (void* x : f) EXPECT_EQ(am_owns(x), 1) << "a pooled frame was freed with the arena";
    // The arena's pages are reused; no pooled frame may overlap its blocks.
    // (Every size a 200-byte frame and its trailer may round to.)
    std::vector<std::pair<char*, size_t>> blocks;
    {
      amalloc::heap_scope scope(arena);
      for (size_t size = 200; size <= 256; size += 8)
        for (int i = 0; i < 64; i++) {
          blocks.emplace_back(static_cast<char*>(am_malloc(size)), size);
          memset(blocks.back().first, 'B', size);
        }
    }
    void* g[8];
    for (void*& x : g) {
      x = am_frame_alloc(200);
      memset(x, 'F', 200);
    }
    for (auto [b, size] : blocks)
      for (size_t j = 0; j < size; j++) ASSERT_EQ(b[j], 'B') << "a pooled frame overlaps a block";
    for (void* x : g) am_frame_free(x, 200);
  }).join();
  EXPECT_EQ(amt::bad_frees_since_mark(), 0u);
}

// A pool in steady use keeps its frames across ticks: it does not miss
// once it has grown to what the loop needs.
TEST(FramePool, BusyPoolsKeepTheirFrames) {
  constexpr size_t kSize = 2400;  // a size no other test pools
  std::thread([] {
    std::vector<void*> v;
    auto pass = [&] {
      for (int i = 0; i < 300; i++) v.push_back(am_frame_alloc(kSize));
      for (void* p : v) am_frame_free(p, kSize);
      v.clear();
      am_executor_idle();
    };
    for (int i = 0; i < 10; i++) pass();  // grown
    am_frame_stats_t s0, s1;
    am_frame_stats(kSize, &s0);
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(600)) {
      pass();
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    am_frame_stats(kSize, &s1);
    EXPECT_EQ(s1.misses, s0.misses) << "a busy pool was shrunk under its loop";
  }).join();
}

// A pool that stops missing gives its frames back at the idle point's
// ticks, a few at a time, down to a few frames (not to a fixed fraction).
TEST(FramePool, IdlePoolsShrinkToAFewFrames) {
  constexpr size_t kSize = 3000;  // a size no other test pools
  std::thread([] {
    std::vector<void*> v;
    for (int round = 0; round < 4; round++) {  // grow the capacity
      for (int i = 0; i < 6000; i++) v.push_back(am_frame_alloc(kSize));
      for (void* p : v) am_frame_free(p, kSize);
      v.clear();
    }
    am_frame_stats_t s;
    am_frame_stats(kSize, &s);
    EXPECT_GE(s.pooled, 2048u) << "the pool should have grown with the bursts";
    const auto t0 = std::chrono::steady_clock::now();
    do {
      am_executor_idle();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      am_frame_stats(kSize, &s);
    } while (s.pooled > 8 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20));
    EXPECT_LE(s.pooled, 8u) << "an idle pool keeps its frames";
  }).join();
}

}  // namespace
