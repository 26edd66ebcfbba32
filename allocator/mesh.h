// Meshing (AMALLOC_MESH=1, after Mesh, PLDI 2019): sparse pages of one size
// class whose live blocks lie at different offsets are merged onto one
// physical page. The live blocks of page B are copied into page A's memory
// at the same offsets, then B's addresses are pointed at A's memory (both
// are shared mappings of one memory file, see filemap.h): every block keeps
// its address and contents, and B's memory goes back to the OS.
//
// A meshed page takes frees only: its free slots hold other pages' live
// blocks, so nothing may be linked through them any more. Each page of a
// group keeps a live bitmap (in its segment's header slot); a free clears
// the block's bit and counts down the group, and the group's pages go back
// to their segments when the last of its blocks is freed.
#pragma once
#include <cstdint>

#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/types.h"

namespace am {

// At most one pass per heap this often (ms); a pass that looks at sparse
// pages and merges none doubles the wait, up to kMeshMaxWaitMs.
constexpr uint32_t kMeshEveryMs = 20;
constexpr uint32_t kMeshMaxWaitMs = 1000;

// The owner meshes the sparse pages of its heap (its slow path, idle point
// and am_collect). Only thread heaps mesh: am_heap_destroy frees an
// application heap's pages wholesale.
void mesh_heap(Heap* h, uint64_t now);
// A pass if meshing is on and one is due (slow paths and idle points).
inline void mesh_maybe(Heap* h) {
  if (!g_options.mesh || !h->is_default) return;
  uint64_t now = os_now_ms();
  if (now - h->last_mesh_ms >= h->mesh_every_ms) mesh_heap(h, now);
}
// A free into a meshed page (any thread; the page's kXMesh bit is set).
void mesh_free(Page* pg, void* p);
// A meshed page's live blocks now (its `used` stays as it was when it was
// merged; frees clear bits in its live bitmap). For stats.
uint32_t mesh_live_blocks(Page* pg);

}  // namespace am
