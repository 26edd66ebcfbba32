// Shared by the epoch benchmarks (am_bench_epoch): the node every variant
// retires (with room for liburcu's rcu_head, so all variants move the same
// bytes), a read-mostly hash map templated on a reclamation scheme, and the
// benchmark bodies. Each scheme (amalloc.cpp, urcu_memb.cpp, urcu_qsbr.cpp)
// is a struct with:
//
//   static void thread_init();     static void thread_fini();
//   static void read_lock();       static void read_unlock();
//   static void quiescent();       // every kQuiescentEvery operations
//   static void retire(Node* n);   // unlinked: free after a grace period
//   static void barrier();         // every retirement so far reclaimed
//
// Every variant allocates nodes with am_malloc and frees them with am_free
// (liburcu's from its call_rcu callback), so they differ only in how they
// wait for readers.
#pragma once
#include <amalloc/amalloc.h>
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "bench_common.h"

namespace epb {

// 64 bytes with liburcu's 16-byte rcu_head at the end.
struct Node {
  std::atomic<Node*> next;
  uint64_t key;
  uint64_t value;
  uint64_t pad[3];
  alignas(8) unsigned char rcu[16];  // struct rcu_head, for call_rcu
};
static_assert(sizeof(Node) == 64);

inline Node* node_from_rcu(void* head) {
  return reinterpret_cast<Node*>(static_cast<unsigned char*>(head) - offsetof(Node, rcu));
}

inline Node* new_node(uint64_t key, uint64_t value) {
  void* p = am_malloc(sizeof(Node));
  if (!p) {
    std::fprintf(stderr, "am_bench_epoch: out of memory\n");
    std::abort();
  }
  Node* n = static_cast<Node*>(p);
  n->next.store(nullptr, std::memory_order_relaxed);
  n->key = key;
  n->value = value;
  return n;
}

// Threads of the concurrent benchmarks: every hardware thread.
inline int bench_threads() { return static_cast<int>(bench::hw_threads()); }

// ---- pin + unpin ------------------------------------------------------------------

// kUnroll read-side sections per iteration; "per_section" is the time of one.
constexpr int kUnroll = 8;

inline void section_counter(benchmark::State& st) {
  st.counters["per_section"] =
      benchmark::Counter(static_cast<double>(st.iterations()) * kUnroll,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

template <class S>
void pin_unpin(benchmark::State& st) {
  S::thread_init();
  for (auto _ : st) {
    for (int i = 0; i < kUnroll; ++i) {
      S::read_lock();
      benchmark::ClobberMemory();
      S::read_unlock();
    }
  }
  section_counter(st);
  S::thread_fini();
}

// ---- retire + reclaim ---------------------------------------------------------------

// One iteration: retire kRetireBatch nodes allocated beforehand, then wait
// until all are reclaimed (the barrier is in the timed region).
constexpr int kRetireBatch = 100000;

template <class S>
void retire_reclaim(benchmark::State& st) {
  S::thread_init();
  std::vector<Node*> nodes(kRetireBatch);
  for (auto _ : st) {
    for (int i = 0; i < kRetireBatch; ++i) nodes[i] = new_node(uint64_t(i), 0);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kRetireBatch; ++i) {
      S::retire(nodes[i]);
      if ((i & 63) == 63) S::quiescent();
    }
    S::barrier();
    auto t1 = std::chrono::steady_clock::now();
    st.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
  }
  st.counters["per_retire"] =
      benchmark::Counter(static_cast<double>(st.iterations()) * kRetireBatch,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  st.SetItemsProcessed(st.iterations() * kRetireBatch);
  S::thread_fini();
}

// ---- read-mostly hash map -------------------------------------------------------------

constexpr uint64_t kKeys = 1 << 15;
constexpr uint64_t kBuckets = 1 << 14;
// Quiescent-state schemes (amalloc executors, urcu-qsbr) pass a quiescent
// point every this many operations, as an event loop would between batches.
constexpr uint64_t kQuiescentEvery = 64;

struct Spin {
  std::atomic<bool> f{false};
  void lock() {
    while (f.exchange(true, std::memory_order_acquire))
      while (f.load(std::memory_order_relaxed)) std::this_thread::yield();
  }
  void unlock() { f.store(false, std::memory_order_release); }
};

struct alignas(64) Bucket {
  std::atomic<Node*> head{nullptr};
  Spin lock;
};

struct Map {
  Bucket* b;
  Map() : b(new Bucket[kBuckets]) {
    for (uint64_t k = 0; k < kKeys; ++k) {
      Bucket& x = b[bucket(k)];
      Node* n = new_node(k, k);
      n->next.store(x.head.load(std::memory_order_relaxed), std::memory_order_relaxed);
      x.head.store(n, std::memory_order_relaxed);
    }
  }
  ~Map() {
    for (uint64_t i = 0; i < kBuckets; ++i)
      for (Node* n = b[i].head.load(); n;) {
        Node* nx = n->next.load();
        am_free(n);
        n = nx;
      }
    delete[] b;
  }
  static uint64_t bucket(uint64_t key) { return (key * 0x9E3779B97F4A7C15ull) >> 50; }

  // Must be in a read-side section.
  uint64_t find(uint64_t key) const {
    for (Node* n = b[bucket(key)].head.load(std::memory_order_acquire); n;
         n = n->next.load(std::memory_order_acquire))
      if (n->key == key) return n->value;
    return 0;
  }
  // Replaces key's node by a copy with a new value; returns the old node
  // (unlinked), which the caller retires (or leaks).
  Node* update(uint64_t key, uint64_t value) {
    Bucket& x = b[bucket(key)];
    Node* fresh = new_node(key, value);
    x.lock.lock();
    std::atomic<Node*>* link = &x.head;
    Node* n = link->load(std::memory_order_relaxed);
    while (n && n->key != key) {
      link = &n->next;
      n = link->load(std::memory_order_relaxed);
    }
    if (n) {
      fresh->next.store(n->next.load(std::memory_order_relaxed), std::memory_order_relaxed);
    } else {  // (every key is always there; kept for completeness)
      link = &x.head;
      fresh->next.store(link->load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    link->store(fresh, std::memory_order_release);
    x.lock.unlock();
    return n;
  }
};

template <class S>
struct MapState {
  static inline Map* map = nullptr;
};

// Every thread: range(0) per mille updates, the rest lookups, of random keys.
template <class S>
void read_mostly_map(benchmark::State& st) {
  const uint64_t updates_per_mille = static_cast<uint64_t>(st.range(0));
  if (st.thread_index() == 0) MapState<S>::map = new Map;
  S::thread_init();
  bench::Rng rng(0x5EED0000u + static_cast<uint64_t>(st.thread_index()));
  uint64_t sink = 0, ops = 0, version = 0;
  for (auto _ : st) {
    // (Read here, not before the loop: thread 0 makes the map before the
    // threads start the loop together.)
    Map& m = *MapState<S>::map;
    uint64_t r = rng.next();
    uint64_t key = (r >> 20) & (kKeys - 1);
    if ((r & 1023) * 1000 < updates_per_mille * 1024) {
      // The bucket lock protects the writer's walk: no read-side section.
      if (Node* old = m.update(key, ++version)) S::retire(old);
    } else {
      S::read_lock();
      sink += m.find(key);
      S::read_unlock();
    }
    if (++ops % kQuiescentEvery == 0) S::quiescent();
  }
  benchmark::DoNotOptimize(sink);
  st.SetItemsProcessed(st.iterations());
  if (st.thread_index() == 0) {
    // Every thread has left the loop (their reads are over); some may not
    // have reached thread_fini yet.
    S::barrier();
    delete MapState<S>::map;
    MapState<S>::map = nullptr;
  }
  S::thread_fini();
}

// The cost of a quiescent-state announcement (an executor's idle point).
template <class S>
void quiescent_point(benchmark::State& st) {
  S::thread_init();
  for (auto _ : st)
    for (int i = 0; i < kUnroll; ++i) S::quiescent();
  section_counter(st);
  S::thread_fini();
}

// The never-free baseline: no read-side sections, removed nodes are leaked.
struct Leak {
  static void thread_init() {}
  static void thread_fini() {}
  static void read_lock() {}
  static void read_unlock() {}
  static void quiescent() {}
  static void retire(Node*) {}
  static void barrier() {}
};

}  // namespace epb

// The map benchmarks of a scheme: 99/1 and 90/10, on one thread and on every
// hardware thread.
#define EPB_MAP_BENCHMARKS(NAME, ...)          \
  BENCHMARK(epb::read_mostly_map<__VA_ARGS__>) \
      ->Name("Map/" NAME)                      \
      ->ArgName("updates_per_mille")           \
      ->Arg(10)                                \
      ->Arg(100)                               \
      ->Threads(1)                             \
      ->Threads(epb::bench_threads())          \
      ->UseRealTime()                          \
      ->MinTime(0.5)

// Pin + unpin on one thread and on every hardware thread at once.
#define EPB_PIN_BENCHMARKS(NAME, ...)    \
  BENCHMARK(epb::pin_unpin<__VA_ARGS__>) \
      ->Name("PinUnpin/" NAME)           \
      ->Threads(1)                       \
      ->Threads(epb::bench_threads())

// Retire + reclaim, the final barrier included (manual time).
#define EPB_RETIRE_BENCHMARKS(NAME, ...)      \
  BENCHMARK(epb::retire_reclaim<__VA_ARGS__>) \
      ->Name("RetireReclaim/" NAME)           \
      ->UseManualTime()                       \
      ->MinTime(0.5)
