// Epoch advances: the scan of the records, the reclaimer's barrier
// (membarrier, or fences on both sides where it is refused or fails), the
// warning for a thread that stays pinned, and how often advances are tried.
#include <atomic>

#include "allocator/format.h"
#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/stats.h"
#include "pools/epoch.h"

namespace am::epoch {

std::atomic<uint64_t> g_advanced_ms;
std::atomic<uint64_t> g_advances, g_failed, g_warnings;

namespace {

// When a failed membarrier switched readers to fences (0: never), and how
// long advances then wait: far longer than a store takes to leave a
// core's store buffer, so that every pin made before the switch is seen.
std::atomic<uint64_t> g_fences_since_us;
constexpr uint64_t kSwitchWaitUs = 10000;

// The reclaimer's side of a pin's ordering: membarrier, or a fence when
// readers fence too. False while no advance may happen yet.
bool heavy_fence() {
  if (!membarrier_on()) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // After a switch from membarrier, pins made before it may not be
    // visible yet (no fence followed them): no advance until they must be.
    uint64_t since = g_fences_since_us.load(std::memory_order_relaxed);
    return since == 0 || os_now_us() - since >= kSwitchWaitUs;
  }
  if (AM_LIKELY(os_membarrier())) return true;
  // membarrier failed after it was registered (a seccomp filter installed
  // since, or no memory for the kernel's CPU mask): readers fence from now
  // on, and the reclaimer too. Said once.
  uint64_t none = 0;
  if (g_fences_since_us.compare_exchange_strong(none, os_now_us(), std::memory_order_relaxed)) {
    __atomic_store_n(&am_epoch_reader_fence_, 1, __ATOMIC_RELAXED);
    misuse("am_epoch", "membarrier(2) failed after it was registered; readers fence from now on");
  }
  return false;
}

AM_COLD void warn_pinned(Record* r, uint64_t stale, uint64_t e) {
  uint64_t since = g_advanced_ms.load(std::memory_order_relaxed);
  uint64_t now = os_now_ms();
  if (now - since < g_options.epoch_warn_ms) return;
  if (r->warned.exchange(stale, std::memory_order_relaxed) == stale) return;
  stats_add(g_warnings, 1);
  char name[16];
  os_thread_name(r->tid, name);
  Out o;
  o.str("amalloc: epoch: thread ").num(static_cast<uint64_t>(r->tid));
  if (name[0]) o.str(" (").str(name).ch(')');
  o.str(" has stayed pinned for over ")
      .num(now - since)
      .str(" ms (epoch ")
      .num(stale)
      .str(", now ")
      .num(e)
      .str("); ")
      .num(g_sealed_batches.load(std::memory_order_relaxed))
      .str(" batches of retirements wait for it\n")
      .flush(2);
}

// A record pinned at an epoch other than `e`, or nullptr.
Record* pinned_behind(uint64_t e) {
  for (Record* r = g_records.load(std::memory_order_acquire); r; r = r->next) {
    uint64_t s = r->state.load(std::memory_order_acquire);
    if ((s & 1) && (s >> 1) != e) return r;
  }
  return nullptr;
}

// Advances from the retire and idle paths, at most one per kAdvanceGapUs
// for the whole process: batches sealed meanwhile share the advances, and
// the membarriers stay a few thousand a second however fast threads retire.
constexpr uint64_t kAdvanceGapUs = 500;
std::atomic<uint64_t> g_last_try_us;

}  // namespace

// Whether readers pin without a fence (see pin()): membarrier works, and
// the options allow it.
bool use_membarrier() { return g_options.epoch_membarrier && os_membarrier_register(); }

// One advance if every pinned record shows the current epoch. A first scan
// without the barrier: a pin it sees is real (or was, a moment ago), so
// the membarrier, which interrupts every CPU that runs one of our threads,
// is paid only when the advance is likely to succeed.
bool try_advance() {
  uint64_t e = epoch_now().load(std::memory_order_acquire);
  Record* late = pinned_behind(e);
  if (!late) {
    if (!heavy_fence()) {
      stats_add(g_failed, 1);
      return false;
    }
    late = pinned_behind(e);
  }
  if (late) {
    stats_add(g_failed, 1);
    if (g_options.epoch_warn_ms)
      warn_pinned(late, late->state.load(std::memory_order_relaxed) >> 1, e);
    return false;
  }
  if (epoch_now().compare_exchange_strong(e, e + 1, std::memory_order_acq_rel)) {
    stats_add(g_advances, 1);
    g_advanced_ms.store(os_now_ms(), std::memory_order_relaxed);
  }
  return true;
}

bool maybe_advance() {
  uint64_t now = os_now_us();
  uint64_t last = g_last_try_us.load(std::memory_order_relaxed);
  if (now - last < kAdvanceGapUs) return false;
  if (!g_last_try_us.compare_exchange_strong(last, now, std::memory_order_relaxed)) return false;
  return try_advance();
}

}  // namespace am::epoch
