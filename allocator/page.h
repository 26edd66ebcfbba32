// Pages: set-up for a size class, carving blocks, collecting remote frees.
#pragma once
#include "allocator/types.h"

namespace am {

// A fresh page slot becomes a page of class `cls` owned by `h`.
void page_init(Page* pg, unsigned cls, Heap* h);
// Carve up to kExtendBytes of new blocks onto the (empty) free list.
// Returns false when the page has none left. (For pages built ahead, whose
// memory is touched first.)
bool page_extend(Page* pg);
// The allocation path's carve: links onto the (empty) free list the blocks
// that start in the OS page where the carved part ends, and returns the
// next block unlinked (counted in `capacity`, not in `used`), or nullptr
// when the page has none left. So amalloc writes only into OS pages that
// the application has already been handed a block of: the page fault of a
// fresh OS page happens at the application's first write, not inside
// malloc, where it was the slowest 0.1% of allocations in bursts.
Block* page_carve(Page* pg);
// Move frees made by other threads onto the owner's free list.
// Returns how many blocks came back. Walks the remote list when the
// page's own list is not empty (to splice them).
uint32_t page_collect(Page* pg);
// The same where it takes no walk (the own list is empty), or where the
// remote list holds every block the page counts as used, which leaves it
// empty (page_is_empty). Otherwise the list waits: the allocation path
// takes it without a walk once the own list runs dry. For the passes over
// many pages (idle point, slow path, trimming, abandoned pages), where
// the walks were a chain of cache misses on lines other cores wrote.
uint32_t page_collect_unwalked(Page* pg);

// ceil(2^64 / d): see Page::divc.
constexpr uint64_t divisibility_magic(uint64_t d) { return ~uint64_t{0} / d + 1; }

// No live block (the head's bias aside).
inline bool page_is_empty(const Page* pg) { return pg->used == pg->is_head; }

AM_INLINE bool is_block_start(const Page* pg, uintptr_t a) {
  uint64_t off = a - reinterpret_cast<uintptr_t>(pg->start);
  return off * pg->divc < pg->divc;
}

// Whether `a` is a block start of `pg` as far as can be told without
// walking lists, and if not, why (free's report, am_retire's lookup).
enum BlockCheck : uint8_t { kBlockOk, kPageNotInUse, kOutsidePage, kInsideBlock };
inline BlockCheck block_check(const Page* pg, uintptr_t a) {
  if (!pg->in_use || pg->block_size == 0) return kPageNotInUse;
  uintptr_t start = reinterpret_cast<uintptr_t>(pg->start);
  // `reserved` (not `capacity`, which the owner changes) bounds the page.
  if (a < start || a >= start + uint64_t{pg->reserved} * pg->block_size) return kOutsidePage;
  return is_block_start(pg, a) ? kBlockOk : kInsideBlock;
}

}  // namespace am
