// Pages: set-up for a size class, carving blocks, collecting remote frees.
#pragma once
#include "allocator/types.h"

namespace am {

// A fresh page slot becomes a page of class `cls` owned by `h`.
void page_init(Page* pg, unsigned cls, Heap* h);
// Carve up to kExtendBytes of new blocks onto the (empty) free list.
// Returns false when the page has none left.
bool page_extend(Page* pg);
// Move frees made by other threads onto the owner's free list.
// Returns how many blocks came back.
uint32_t page_collect(Page* pg);

// ceil(2^64 / d): see Page::divc.
constexpr uint64_t divisibility_magic(uint64_t d) { return ~uint64_t{0} / d + 1; }

// No live block (the head's bias aside).
inline bool page_is_empty(const Page* pg) { return pg->used == pg->is_head; }

AM_INLINE bool is_block_start(const Page* pg, uintptr_t a) {
  uint64_t off = a - reinterpret_cast<uintptr_t>(pg->start);
  return off * pg->divc < pg->divc;
}

}  // namespace am
