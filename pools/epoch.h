// Epoch-based deferred reclamation. A reader pins the global epoch with a
// plain store; a retired block waits in a batch until the epoch has
// advanced twice past the batch's tag, which proves that no pin that could
// have seen it remains. The reclaiming side pays for the ordering with
// membarrier(2) (or a fence on both sides where the kernel lacks it).
#pragma once
#include <atomic>
#include <cstdint>

#include "allocator/config.h"
#include "amalloc/amalloc.h"

namespace am::epoch {

// Retirements per batch: a batch is 4 KiB, one block of amalloc's classes.
constexpr uint32_t kBatch = 126;
// Test builds (AMALLOC_TEST_POISON): every byte of a reclaimed block.
constexpr unsigned char kReclaimedByte = 0xDE;

struct Entry {
  void* p;
  void (*fn)(void* p, void* ctx);  // nullptr: nothing to call
  void* ctx;
  uint32_t bytes;       // usable size of an amalloc block; 0 for am_epoch_defer
  uint32_t free_after;  // 1: am_free(p) after fn
};

struct Batch {
  Batch* next;
  uint64_t tag;        // the epoch when sealed: reclaimable once epoch >= tag + 2
  uint64_t seq;        // seal order, which barriers wait on
  uint64_t bytes;      // sum of the entries' bytes
  uint64_t opened_ms;  // when its first entry came
  uint64_t sealed_ms;
  uint32_t n;
  Entry e[kBatch];
};
static_assert(sizeof(Batch) <= 4096);

// One per thread that pinned, retired or registered as an executor. Reused
// after its thread exits; never freed, so a scan may walk the list without
// a lock.
struct alignas(64) Record {
  std::atomic<uint64_t> state;     // (epoch << 1) | 1 while pinned, else 0
  std::atomic<uint8_t> open_lock;  // guards `open` against barrier and stats
  Batch* open;                     // retirements not sealed yet
  Record* next;                    // every record, push only
  int tid;                         // for the long-pin warning
  uint8_t in_use;                  // under the registry lock
  std::atomic<uint64_t> warned;    // the stale epoch already reported
  uint32_t idle_calls;             // the owner's idle points (works every 8th)
};

// The global epoch, exported for the inline pins of amalloc.h.
inline std::atomic_ref<uint64_t> epoch_now() { return std::atomic_ref<uint64_t>(am_epoch_global_); }
// Chosen once, before the first record exists: readers use a compiler
// barrier when the reclaimer can use membarrier, else a full fence.
// (Atomic: a failed membarrier switches it while readers look.)
inline bool membarrier_on() {
  return __atomic_load_n(&am_epoch_reader_fence_, __ATOMIC_RELAXED) == 0;
}
extern std::atomic<uint64_t> g_sealed_batches;  // sealed, not reclaimed
extern std::atomic<Record*> g_records;          // every record, newest first

// Advances (epoch_advance.cpp): one if every pinned record shows the
// current epoch (try_advance), the same at most every 500 µs for the whole
// process (maybe_advance), whether readers may pin without a fence, when
// the last advance happened, and the counters of the stats.
bool try_advance();
bool maybe_advance();
bool use_membarrier();
extern std::atomic<uint64_t> g_advanced_ms;
extern std::atomic<uint64_t> g_advances, g_failed, g_warnings;

// The calling thread's state. `nest` counts its pins; a registered executor
// that is online holds one of them for good (`perm` = 1): quiescent-state
// mode, where guards nest inside.
extern __thread Record* t_rec;
#define t_nest am_epoch_self_.nest
#define t_perm am_epoch_self_.perm

// Executor mode (epoch_api.cpp), and whether this thread runs deleters.
extern __thread uint8_t t_exec;        // registered as an executor
extern __thread uint8_t t_offline;     // ... and offline now
extern __thread uint8_t t_reclaiming;  // running deleters

Record* register_thread();
// What the public API asks of the collector (epoch.cpp): a retirement
// (free_after: am_free(p) after f), a grace period with reclamation, every
// retirement made so far reclaimed, the counters, and the report's lines.
// owned: p is a live block the caller owns and f frees (its size counts in
// the pending bytes).
void retire(const char* fn, void* p, void (*f)(void*, void*), void* ctx, bool free_after,
            bool owned = false);
void wait_grace_period();
void wait_all_reclaimed();
void collector_stats(am_epoch_stats_t* out);
void stats_hook(int fd, bool json);
// One line naming the function (and the pointer, if any).
AM_COLD void misuse(const char* fn, const char* what, const void* p = nullptr);
AM_NOINLINE void idle_slow(Record* r);

AM_INLINE void pin(Record* r) {
  // Release (a plain store on x86): a reclaimer that reads this pin also
  // sees everything this thread read under its earlier pins.
  r->state.store((epoch_now().load(std::memory_order_acquire) << 1) | 1, std::memory_order_release);
  // The store must be visible before this thread reads the structure.
  if (membarrier_on())
    std::atomic_signal_fence(std::memory_order_seq_cst);
  else
    std::atomic_thread_fence(std::memory_order_seq_cst);
}

AM_INLINE void enter() {
  if (t_nest++ != 0) return;
  Record* r = t_rec;
  if (AM_UNLIKELY(r == nullptr)) r = register_thread();
  pin(r);
}

AM_INLINE void leave() {
  if (AM_UNLIKELY(t_nest <= t_perm))
    return misuse("am_epoch_exit", "the thread is not pinned; ignored");
  if (--t_nest == 0) t_rec->state.store(0, std::memory_order_release);
}

}  // namespace am::epoch
