// The executor idle point: the allocator's part (collect remote frees,
// purge), the frame pools' part (batches home, adapt pools) and the epoch
// collector's (the quiescent state of a registered executor). With nothing
// to do it is a few loads and predicted branches: one clock for all three
// parts (each used to keep its own call counter).
#include "allocator/background.h"
#include "allocator/heap.h"
#include "amalloc/amalloc.h"
#include "pools/epoch.h"
#include "pools/frame_pool.h"

namespace {

__thread uint32_t t_idle_calls __attribute__((tls_model("initial-exec")));
__thread uint64_t t_idle_seen __attribute__((tls_model("initial-exec")));

// Whether this call is a tick (the purge check, pool sizes): at most once
// per kIdleTickMs while the worker keeps the clock, which costs two loads
// and no store; every 64th call otherwise.
AM_INLINE bool idle_tick() {
  uint64_t clock = am::g_idle_clock.load(std::memory_order_relaxed);
  if (__builtin_expect(clock != 0, 1)) {
    if (__builtin_expect(clock == t_idle_seen, 1)) return false;
    t_idle_seen = clock;
    return true;
  }
  return (++t_idle_calls & 63) == 0;
}

AM_NOINLINE void idle_work(am::Heap* h, am::frames::FrameCache* c, am::epoch::Record* r, bool tick,
                           bool collect) {
  if (h != &am::g_empty_heap && (collect | tick)) am::heap_idle_work(h, collect, tick);
  if (c) am::frames::frame_idle_work(c, tick);
  if (r) am::epoch::idle_slow(r);
}

}  // namespace

extern "C" void am_executor_idle(void) {
  // The empty heap's hints are never set, so no test for it here. Branches,
  // each predicted, cost less than combining the four tests.
  am::Heap* h = am::t_heap;
  am::frames::FrameCache* c = am::frames::t_frames;
  am::epoch::Record* r = am::epoch::t_rec;
  bool tick = idle_tick();
  bool collect = am::heap_remote_waiting(h);
  if (__builtin_expect(tick | collect, 0)) return idle_work(h, c, r, tick, collect);
  if (c && __builtin_expect(am::frames::frame_work_waiting(c), 0))
    return idle_work(h, c, r, false, false);
  if (__builtin_expect(r != nullptr, 0)) am::epoch::idle_slow(r);
}
