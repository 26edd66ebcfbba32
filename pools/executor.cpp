// The executor idle point: the allocator's part (collect remote frees,
// purge) and the frame pools' part (batches home, adapt pools).
#include "allocator/heap.h"
#include "amalloc/amalloc.h"
#include "pools/frame_pool.h"

extern "C" void am_executor_idle(void) {
  am::Heap* h = am::t_heap;
  if (h != &am::g_empty_heap) am::heap_idle(h);
  am::frames::frame_idle();
}
