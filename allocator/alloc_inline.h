// The fast paths of malloc and free, inlined into every entry point
// (am_malloc, malloc, operator new, ...). No lock, no atomic RMW.
#pragma once
#include <cstddef>
#include <cstdint>

#include "allocator/heap.h"
#include "allocator/page.h"
#include "allocator/segment.h"

namespace am {

void* malloc_slow(size_t size);
void free_slow(void* p, Page* pg, Heap* h);
void free_not_ours(void* p);
void free_bad_block(void* p, Page* pg);

// size -> direct slot -> page -> pop.
AM_INLINE void* malloc_fast(size_t size) {
  if (AM_LIKELY(size <= kDirectMax)) {
    Heap* h = t_heap;
    Page* pg = h->direct[(size + 15) >> 4];
    Block* b = pg->free;
    if (AM_LIKELY(b != nullptr)) {
      pg->free = b->next;
      pg->used++;
      return b;
    }
  }
  return malloc_slow(size);
}

// Segment map -> page -> owner check -> block check -> push. NULL, foreign
// pointers, remote frees and full pages all leave through one branch each.
AM_INLINE void free_fast(void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  unsigned shift = segmap_shift(a);
  if (AM_UNLIKELY(shift == 0)) return free_not_ours(p);
  Page* pg = page_of(a, shift);
  Heap* h = t_heap;
  if (AM_UNLIKELY(pg->owner_fast.load(std::memory_order_relaxed) != h)) return free_slow(p, pg, h);
  Block* head = pg->free;
  if (AM_UNLIKELY(!is_block_start(pg, a) || p == head)) return free_bad_block(p, pg);
  Block* b = static_cast<Block*>(p);
  b->next = head;
  pg->free = b;
  if (AM_UNLIKELY(--pg->used == 0) && !pg->is_head) heap_page_empty(h, pg);
}

}  // namespace am
