// amalloc's epoch collector in the epoch benchmarks: guard mode (a pin per
// read-side section), quiescent-state executor mode (no pin; the idle point
// every kQuiescentEvery operations), and the leak-everything baseline.
#include <amalloc/amalloc.h>

#include <amalloc/amalloc.hpp>

#include "epoch_bench.h"

namespace {

using epb::Node;

// A guard per read-side section: the header's inline pins, which
// amalloc::epoch::guard uses.
struct AmGuard {
  static void thread_init() {}
  static void thread_fini() {}
  static void read_lock() { am_epoch_enter_fast(); }
  static void read_unlock() { am_epoch_exit_fast(); }
  static void quiescent() {}
  static void retire(Node* n) { am_retire(n); }
  static void barrier() { amalloc::epoch::barrier(); }
};

// Like AmGuard, but with a callback per node (as call_rcu always has).
struct AmGuardFn : AmGuard {
  static void retire(Node* n) {
    am_retire_fn(
        n, [](void* p, void*) { benchmark::DoNotOptimize(p); }, nullptr);
  }
};

// A registered executor: pinned all the time, quiescent at its idle point.
struct AmExecutor {
  static void thread_init() { am_epoch_executor_register(); }
  static void thread_fini() { am_epoch_executor_unregister(); }
  static void read_lock() {}
  static void read_unlock() {}
  static void quiescent() { am_executor_idle(); }
  static void retire(Node* n) { am_retire(n); }
  static void barrier() { amalloc::epoch::barrier(); }
};

// The C++ wrapper, literally.
void pin_unpin_cxx_guard(benchmark::State& st) {
  for (auto _ : st) {
    for (int i = 0; i < epb::kUnroll; ++i) {
      amalloc::epoch::guard g;
      benchmark::ClobberMemory();
    }
  }
  epb::section_counter(st);
}

}  // namespace

EPB_PIN_BENCHMARKS("amalloc_guard", AmGuard);
BENCHMARK(pin_unpin_cxx_guard)->Name("PinUnpin/amalloc_cxx_guard");
EPB_PIN_BENCHMARKS("amalloc_executor", AmExecutor);
BENCHMARK(epb::quiescent_point<AmExecutor>)->Name("QuiescentPoint/amalloc_executor_idle");

EPB_RETIRE_BENCHMARKS("amalloc_am_retire", AmGuard);
EPB_RETIRE_BENCHMARKS("amalloc_am_retire_fn", AmGuardFn);
EPB_RETIRE_BENCHMARKS("amalloc_executor_am_retire", AmExecutor);

EPB_MAP_BENCHMARKS("amalloc_guard", AmGuard);
EPB_MAP_BENCHMARKS("amalloc_executor", AmExecutor);
EPB_MAP_BENCHMARKS("leak", epb::Leak);
