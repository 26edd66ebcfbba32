// The executor idle point: the allocator's part (collect remote frees,
// purge), the frame pools' part (batches home, adapt pools) and the epoch
// collector's (the quiescent state of a registered executor).
#include "allocator/heap.h"
#include "amalloc/amalloc.h"
#include "pools/epoch.h"
#include "pools/frame_pool.h"

extern "C" void am_executor_idle(void) {
  am::Heap* h = am::t_heap;
  if (h != &am::g_empty_heap) am::heap_idle(h);
  am::frames::frame_idle();
  am::epoch::idle();
}
