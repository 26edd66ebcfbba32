// The executor idle point: the allocator's part (collect remote frees,
// purge), the frame pools' part (batches home, adapt pools) and the epoch
// collector's (the quiescent state of a registered executor). With nothing
// to do it is one test of a few loads and one counter, shared by all three
// parts (each used to keep its own).
#include "allocator/heap.h"
#include "amalloc/amalloc.h"
#include "pools/epoch.h"
#include "pools/frame_pool.h"

namespace {

__thread uint32_t t_idle_calls __attribute__((tls_model("initial-exec")));

AM_NOINLINE void idle_work(am::Heap* h, am::frames::FrameCache* c, am::epoch::Record* r, bool tick,
                           bool collect) {
  if (h != &am::g_empty_heap && (collect | tick)) am::heap_idle_work(h, collect, tick);
  if (c) am::frames::frame_idle_work(c, tick);
  if (r) am::epoch::idle_slow(r);
}

}  // namespace

extern "C" void am_executor_idle(void) {
  // The empty heap's hints are never set, so no test for it here.
  am::Heap* h = am::t_heap;
  am::frames::FrameCache* c = am::frames::t_frames;
  am::epoch::Record* r = am::epoch::t_rec;
  bool tick = (++t_idle_calls & 63) == 0;  // the clock and pool sizes, every 64th call
  bool collect = am::heap_remote_waiting(h);
  bool frames = c && am::frames::frame_work_waiting(c);
  if (__builtin_expect(tick | collect | frames | (r != nullptr), 0))
    idle_work(h, c, r, tick, collect);
}
