// am_wl_xfree: cross-thread frees, and little else. Producer threads
// allocate blocks and pass them, one pointer at a time, through lock-free
// single-producer single-consumer rings to consumer threads, which verify
// and free them: the frees of an executor that receives work from another.
// prodcons measures the same pattern behind mutex-and-condition-variable
// queues of 64-block vectors, whose handoff costs more than the allocator;
// here the handoff is a store and a load, so what differs between
// allocators is the cost of a free of another thread's block and of the
// producer's allocations that reuse them.
//
// Pairs: max(1, threads / 2) producer/consumer pairs, one ring each (1024
// slots, indices published every 32 blocks; a full or empty ring spins
// briefly, then yields). Sizes as in
// prodcons: 16..1024 bytes, 2% of 1..16 KiB. Blocks per pair: tiny 50000,
// quick 3000000, full 12000000.
//
// Every block carries its tag in its first 8 bytes and a pattern derived
// from it (wl_fill); consumers verify it before the free. The checksum of
// the tags produced must equal that of the tags verified and freed.
//
// Built a second time as am_wl_xfree_exec (WL_EXECUTOR): the same work on
// executor heaps where the allocator has them. When amalloc is preloaded
// (am_heap_new found with dlsym; the program is not linked against it),
// each thread binds a heap of its own and calls the executor idle point
// where an event loop would: when its ring is full or empty, and after
// each 32 blocks (a pass of its run queue). Under other allocators it runs
// like xfree. The metric executor_heaps says which it was.
//
// --ideal: the limit no allocator can pass here. No malloc or free at all:
// a consumer hands each block back to its producer through a second ring
// like the first (no atomic per block), and the producer reuses the block
// freed last first. What is left is the program's own work and the cache
// transfers of the blocks' lines between the two threads.
//
// Metrics: frees_per_s (primary), time_s, pairs, executor_heaps, ideal,
// peak_rss_kib.
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "../wl_common.h"

namespace {

constexpr uint32_t kRing = 1024;

// amalloc's executor API, when amalloc is the preloaded allocator.
struct Executor {
  void* (*heap_new)() = nullptr;
  void* (*heap_bind)(void*) = nullptr;
  void (*heap_delete)(void*) = nullptr;
  void (*idle)() = nullptr;
  bool on() const { return idle != nullptr; }
};
Executor g_exec;

void find_executor_api() {
#ifdef WL_EXECUTOR
  Executor e;
  e.heap_new = reinterpret_cast<void* (*)()>(dlsym(RTLD_DEFAULT, "am_heap_new"));
  e.heap_bind = reinterpret_cast<void* (*)(void*)>(dlsym(RTLD_DEFAULT, "am_heap_bind"));
  e.heap_delete = reinterpret_cast<void (*)(void*)>(dlsym(RTLD_DEFAULT, "am_heap_delete"));
  e.idle = reinterpret_cast<void (*)()>(dlsym(RTLD_DEFAULT, "am_executor_idle"));
  if (e.heap_new && e.heap_bind && e.heap_delete && e.idle) g_exec = e;
#endif
}

// An executor's heap for the life of a thread's loop.
struct ExecutorScope {
  void* heap = nullptr;
  ExecutorScope() {
    if (g_exec.on() && (heap = g_exec.heap_new()) != nullptr) g_exec.heap_bind(heap);
  }
  ~ExecutorScope() {
    if (!heap) return;
    g_exec.heap_bind(nullptr);
    g_exec.heap_delete(heap);  // blocks still in flight stay valid
  }
};

inline void idle_point() {
  if (g_exec.on()) g_exec.idle();
}

struct alignas(64) Ring {
  void* slot[kRing];
  alignas(64) std::atomic<uint64_t> head{0};  // next to write (producer)
  alignas(64) std::atomic<uint64_t> tail{0};  // next to read (consumer)
};

// --ideal: blocks travel back on a ring of their own, larger than all the
// blocks that can be in flight (so the consumer never waits on it).
bool g_ideal = false;
constexpr uint32_t kBack = 4096;
constexpr size_t kIdealBlock = 16 * 1024;  // room for every size
struct alignas(64) BackRing {
  void* slot[kBack];
  alignas(64) std::atomic<uint64_t> head{0};  // consumer
  alignas(64) std::atomic<uint64_t> tail{0};  // producer
};

// The producer's side: blocks taken back, reused last-in first-out.
struct Recycler {
  BackRing* r;
  uint64_t tail = 0;
  std::vector<void*> stack;
  void* get() {
    if (stack.empty()) {
      for (uint64_t h = r->head.load(std::memory_order_acquire); tail < h; ++tail)
        stack.push_back(r->slot[tail % kBack]);
      r->tail.store(tail, std::memory_order_release);
    }
    if (stack.empty()) return std::aligned_alloc(64, kIdealBlock);  // a new one
    void* p = stack.back();
    stack.pop_back();
    return p;
  }
};

// The consumer's side, published every 32 blocks and before it waits.
struct Returner {
  BackRing* r;
  uint64_t head = 0;
  void put(void* p) {
    while (head - r->tail.load(std::memory_order_acquire) >= kBack) std::this_thread::yield();
    r->slot[head++ % kBack] = p;
    if (head % 32 == 0) flush();
  }
  void flush() { r->head.store(head, std::memory_order_release); }
};

size_t tag_size(uint64_t tag, uint64_t seed) {
  uint64_t h = wl_mix(tag ^ seed);
  if (h % 50 == 0) return 1024 + (h >> 8) % (15 * 1024);
  return 16 + (h >> 8) % 1009;
}

// Spin a little, then give the CPU away (more threads than cores).
void wait_a_bit(unsigned& spins) {
  if (spins == 0) idle_point();  // about to wait: an event loop's idle point
  if (++spins < 64) return;
  spins = 0;
  std::this_thread::yield();
}

// Indices are published every kPublish slots (and when waiting), so that
// the two threads share a cache line once per kPublish blocks, not per block.
constexpr uint64_t kPublish = 32;

void produce(Ring& r, BackRing& back, unsigned pair, uint64_t blocks, uint64_t seed,
             WlChecksum& made) {
  Recycler recycler{&back, 0, {}};
  ExecutorScope executor;
  uint64_t head = 0, tail_seen = 0;
  for (uint64_t i = 0; i < blocks; ++i) {
    uint64_t tag = (uint64_t(pair) << 40) | i;
    size_t n = tag_size(tag, seed);
    auto* p = static_cast<unsigned char*>(g_ideal ? recycler.get() : std::malloc(n));
    if (p == nullptr) std::abort();
    std::memcpy(p, &tag, 8);
    wl_fill(p + 8, n - 8, tag);
    made.add(tag);
    unsigned spins = 0;
    while (head - tail_seen == kRing) {
      r.head.store(head, std::memory_order_release);
      tail_seen = r.tail.load(std::memory_order_acquire);
      if (head - tail_seen == kRing) wait_a_bit(spins);
    }
    r.slot[head % kRing] = p;
    if (++head % kPublish == 0) {
      r.head.store(head, std::memory_order_release);
      idle_point();
    }
  }
  r.head.store(head, std::memory_order_release);
}

void consume(Ring& r, BackRing& back, uint64_t blocks, uint64_t seed, WlChecksum& freed,
             uint64_t& bad) {
  Returner returner{&back};
  ExecutorScope executor;
  uint64_t tail = 0, head_seen = 0;
  while (tail < blocks) {
    unsigned spins = 0;
    while (tail == head_seen) {
      r.tail.store(tail, std::memory_order_release);
      head_seen = r.head.load(std::memory_order_acquire);
      if (tail == head_seen) {
        if (g_ideal) returner.flush();
        wait_a_bit(spins);
      }
    }
    auto* p = static_cast<unsigned char*>(r.slot[tail % kRing]);
    if (++tail % kPublish == 0) {
      r.tail.store(tail, std::memory_order_release);
      idle_point();
    }
    uint64_t tag;
    std::memcpy(&tag, p, 8);
    if (wl_verify(p + 8, tag_size(tag, seed) - 8, tag))
      freed.add(tag);
    else
      ++bad;
    if (g_ideal)
      returner.put(p);
    else
      std::free(p);
  }
}

}  // namespace

int main(int argc, char** argv) {
#ifdef WL_EXECUTOR
  const char* name = "xfree_exec";
#else
  const char* name = "xfree";
#endif
  std::vector<char*> av;
  g_ideal = wl_take_flag(argc, argv, "--ideal", av);
  WlArgs args = wl_parse(int(av.size()), av.data(), name);
  if (!g_ideal) find_executor_api();
  wl_arm_hard_cap(args);
  const unsigned pairs = std::max(1u, args.threads / 2);
  const uint64_t blocks = wl_pick<uint64_t>(args, 50000, 3000000, 12000000);

  std::vector<std::unique_ptr<Ring>> rings;
  std::vector<std::unique_ptr<BackRing>> backs;
  for (unsigned i = 0; i < pairs; ++i) {
    rings.push_back(std::make_unique<Ring>());
    backs.push_back(std::make_unique<BackRing>());
  }
  std::vector<WlChecksum> made(pairs), freed(pairs);
  std::vector<uint64_t> bad(pairs, 0);
  const double t0 = wl_now_s();
  wl_run_threads(2 * pairs, [&](unsigned t) {
    unsigned pair = t / 2;
    if (t % 2 == 0)
      produce(*rings[pair], *backs[pair], pair, blocks, args.seed, made[pair]);
    else
      consume(*rings[pair], *backs[pair], blocks, args.seed, freed[pair], bad[pair]);
  });
  const double secs = wl_now_s() - t0;

  WlChecksum m, f;
  uint64_t nbad = 0;
  for (auto& x : made) m.merge(x);
  for (auto& x : freed) f.merge(x);
  for (auto x : bad) nbad += x;
  if (nbad != 0 || !(m == f))
    std::fprintf(stderr, "%s: %llu damaged, %llu made, %llu freed\n", name,
                 (unsigned long long)nbad, (unsigned long long)m.count,
                 (unsigned long long)f.count);

  WlResult r = wl_result(name, args.size, 2 * pairs, "frees_per_s", "higher");
  r.metric("frees_per_s", double(f.count) / secs);
  r.metric("time_s", secs);
  r.metric("pairs", pairs);
  r.metric("executor_heaps", g_exec.on() ? 1 : 0);
  r.metric("ideal", g_ideal ? 1 : 0);
  r.metric("peak_rss_kib", double(peak_rss_kib()));
  r.checksum = wl_hex(f);
  r.checksum_ok = nbad == 0 && m == f;
  return wl_finish(r);
}
