// Trimming sparse pages: a page of blocks larger than an OS page that is a
// quarter live or less gives back the OS pages of its free blocks, which
// leave the free list for a bitmap (Segment::trimmed) until the list runs
// dry. The page stays where it is and its blocks keep their addresses; a
// block allocated again faults fresh zero pages in as it is written. This is what
// lets a fragmented heap shrink without meshing: the decay only returns
// pages that are entirely free, and a page with one survivor never is.
//
// Only the owner trims (the free list is its own), at its slow path, idle
// point and am_collect; pages in the memory file (AMALLOC_MESH) are
// meshed and punched instead (mesh.cpp). A pass also gives back what lies
// past the end of the heap's span blocks in their last slot, when a block
// placed there before left it resident.
#pragma once
#include <cstdint>

#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/types.h"

namespace am {

// At most one pass per heap this often (us) while passes find work; a
// pass that finds nothing doubles the wait, up to kTrimMaxWaitUs.
constexpr uint32_t kTrimEveryUs = 5000;
constexpr uint32_t kTrimMaxWaitUs = 100000;
// The wait after a pass that ran out of time: 200 us of every 2 ms (10% of
// the thread) while sparse pages wait. Their work is bounded by the memory
// freed, so this sets how soon RSS follows, not the total cost.
constexpr uint32_t kTrimBacklogUs = 2000;
// The time a pass may take (us). An madvise call costs 1.6 us here when
// the process runs one thread, 12 us when another of its threads runs on
// another core (the TLB shootdown interrupts it), so a budget in calls
// would be 8x too long or too short: a slow path stops after 200 us, an
// idle point, where the executor is about to block, after 1 ms.
constexpr uint32_t kTrimUsSlowPath = 200;
constexpr uint32_t kTrimUsIdle = 1000;

// One pass over `h`'s queues, for at most `max_us` (am_collect passes no
// limit), resuming at the class where the last pass stopped.
void trim_heap(Heap* h, uint64_t now, uint32_t max_us);

// Page::tail_state of a span block (see types.h).
constexpr uint16_t kTailResident = 1;
constexpr uint16_t kTailSeen = 2;

// A page's trimmed blocks, when its free list ran dry: links up to 64 KiB
// of them (the lowest first) and returns one more, unlinked, as
// page_carve does; nullptr when it has none.
Block* page_untrim(Page* pg);
// A page slot starts again: no block of it is trimmed.
void trim_forget(Page* pg);

// Pages of `h` may be thinning out: a pass that backed off comes back at
// the next slow path (one that waits less, for a backlog, keeps its wait).
inline void trim_soon(Heap* h) {
  if (h->trim_every_us <= kTrimEveryUs) return;
  h->trim_every_us = kTrimEveryUs;
  h->trim_gate_ms = 0;
}

// Whether a pass over `h` is due (read without its heap lock: a guess).
inline bool trim_due(const Heap* h) {
  if (!g_options.trim || os_now_ms() < h->trim_gate_ms) return false;
  return os_now_us() - h->last_trim_us >= h->trim_every_us;
}

inline void trim_maybe(Heap* h, uint32_t max_us) {
  if (trim_due(h)) trim_heap(h, os_now_us(), max_us);
}

}  // namespace am
