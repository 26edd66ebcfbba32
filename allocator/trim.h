// Trimming sparse pages: a page of blocks larger than an OS page that is a
// quarter live or less gives back the OS pages lying wholly inside its free
// blocks (each block keeps the OS page that holds its free-list link). The
// page stays where it is and its blocks keep their addresses; a block
// allocated again faults fresh zero pages in as it is written. This is what
// lets a fragmented heap shrink without meshing: the decay only returns
// pages that are entirely free, and a page with one survivor never is.
//
// Only the owner trims (the free list is its own), at its slow path, idle
// point and am_collect; pages in the memory file (AMALLOC_MESH) are
// meshed and punched instead (mesh.cpp).
#pragma once
#include <cstdint>

#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/types.h"

namespace am {

// At most one pass per heap this often (ms); a pass that finds nothing to
// trim doubles the wait, up to kTrimMaxWaitMs.
constexpr uint32_t kTrimEveryMs = 20;
constexpr uint32_t kTrimMaxWaitMs = 100;
// madvise calls per pass: about a quarter of a millisecond of the owner's
// time when it runs at a slow path.
constexpr uint32_t kTrimCallsPerPass = 1024;

// One pass over `h`'s queues: at most `max_calls` madvise calls, resuming
// at the class where the last pass stopped.
// am_collect passes no limit.
void trim_heap(Heap* h, uint64_t now, uint32_t max_calls = kTrimCallsPerPass);

inline void trim_maybe(Heap* h) {
  if (!g_options.trim) return;
  uint64_t now = os_now_ms();
  if (now - h->last_trim_ms >= h->trim_every_ms) trim_heap(h, now);
}

}  // namespace am
