// Coroutine frames: create + resume + destroy, on one thread and across
// threads (created on a producer, destroyed on a consumer through a ring),
// for three frame sources:
//   Global    the global operator new (glibc, or whichever allocator is
//             LD_PRELOADed: run this binary under each),
//   Pooled    amalloc::pooled_frame (amalloc's frame pools, from
//             amalloc_core: they work whatever the global allocator is),
//   Naive     an unsynchronised thread-local exact-size free list (the
//             floor on one thread; the pathological case across threads:
//             the consumer's list grows while the producer's stays empty).
// Each frame holds a 200-byte local buffer, like a small request handler.
#include <benchmark/benchmark.h>

#include <amalloc/amalloc.hpp>
#include <atomic>
#include <coroutine>
#include <cstring>
#include <thread>

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

template <class Base>
void BM_SameThread(benchmark::State& state) {
  int sum = 0;
  for (auto _ : state) {
    Task<Base> t = handler<Base>(static_cast<int>(sum & 1023));
    t.h.resume();
    sum += t.h.promise().value;
    t.h.destroy();
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations());
}

// A single-producer single-consumer ring of coroutine handles.
template <class Base>
struct Ring {
  static constexpr size_t kSize = 1024;
  std::coroutine_handle<typename Task<Base>::promise_type> slots[kSize];
  alignas(64) std::atomic<size_t> head{0};
  alignas(64) std::atomic<size_t> tail{0};
};

template <class Base>
void BM_CrossThread(benchmark::State& state) {
  Ring<Base> ring;
  std::atomic<bool> stop{false};
  std::atomic<long> consumed{0};
  std::thread consumer([&] {
    size_t tail = 0;
    long n = 0;
    for (;;) {
      size_t head = ring.head.load(std::memory_order_acquire);
      if (tail == head) {
        if (stop.load(std::memory_order_acquire) &&
            tail == ring.head.load(std::memory_order_acquire))
          break;
        amalloc::executor_idle();  // a consumer about to wait: its idle point
        std::this_thread::yield();
        continue;
      }
      while (tail != head) {
        auto h = ring.slots[tail % Ring<Base>::kSize];
        h.resume();
        n += h.promise().value;
        h.destroy();
        tail++;
      }
      ring.tail.store(tail, std::memory_order_release);
    }
    consumed = n;
  });
  size_t head = 0;
  for (auto _ : state) {
    while (head - ring.tail.load(std::memory_order_acquire) >= Ring<Base>::kSize) {
      amalloc::executor_idle();
      std::this_thread::yield();
    }
    ring.slots[head % Ring<Base>::kSize] = handler<Base>(static_cast<int>(head & 1023)).h;
    head++;
    ring.head.store(head, std::memory_order_release);
  }
  stop = true;
  consumer.join();
  benchmark::DoNotOptimize(consumed.load());
  state.SetItemsProcessed(state.iterations());
}

// The idle point of an executor with nothing to do (it has a heap and a
// frame pool, as a real one would).
void BM_IdleNothingToDo(benchmark::State& state) {
  am_frame_free(am_frame_alloc(64), 64);
  am_free(am_malloc(64));
  for (auto _ : state) amalloc::executor_idle();
  state.SetItemsProcessed(state.iterations());
}

BENCHMARK(BM_IdleNothingToDo);
BENCHMARK_TEMPLATE(BM_SameThread, GlobalFrame);
BENCHMARK_TEMPLATE(BM_SameThread, amalloc::pooled_frame);
BENCHMARK_TEMPLATE(BM_SameThread, NaiveFrame);
BENCHMARK_TEMPLATE(BM_CrossThread, GlobalFrame)->UseRealTime();
BENCHMARK_TEMPLATE(BM_CrossThread, amalloc::pooled_frame)->UseRealTime();
BENCHMARK_TEMPLATE(BM_CrossThread, NaiveFrame)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
