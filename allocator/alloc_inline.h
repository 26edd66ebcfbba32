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
void* heap_malloc_slow(Heap* h, size_t size);
void free_slow(void* p, Page* slot);
void free_not_ours(void* p);
void free_bad_block(void* p, Page* pg);

// The owner pushes a block onto its page's free list (`head` is
// pg->free) without the heap lock; returns whether the page has no live
// block left. `used` is stored last, with release: a sweep that reads it
// equal to the page's remote frees knows that this free is complete and
// that the owner holds no block of the page (sweep.cpp). x86 stores are
// ordered, so there only the compiler must keep the order, and the
// decrement stays one read-modify-write instruction (two fewer than an
// atomic store).
AM_INLINE bool owner_push(Page* pg, Block* b, Block* head) {
  b->next = head;
  pg->free = b;
#if defined(__x86_64__) && !defined(AM_TSAN)
  __asm__ __volatile__("" ::: "memory");
  return --pg->used == 0;
#else
  uint32_t used = pg->used - 1;
  __atomic_store_n(&pg->used, used, __ATOMIC_RELEASE);
  return used == 0;
#endif
}

// size -> direct slot -> page -> pop; nullptr when the page is empty.
AM_INLINE void* direct_pop(Heap* h, size_t size) {
  Page* pg = h->direct[(size + 15) >> 4];
  Block* b = pg->free;
  if (AM_LIKELY(b != nullptr)) {
    pg->free = b->next;
    pg->used++;
  }
  return b;
}

AM_INLINE void* malloc_fast(size_t size) {
  if (AM_LIKELY(size <= kDirectMax))
    if (void* p = direct_pop(t_heap, size); AM_LIKELY(p != nullptr)) return p;
  return malloc_slow(size);
}

// The same from a given heap (am_heap_malloc).
AM_INLINE void* heap_malloc(Heap* h, size_t size) {
  if (AM_LIKELY(size <= kDirectMax))
    if (void* p = direct_pop(h, size); AM_LIKELY(p != nullptr)) return p;
  return heap_malloc_slow(h, size);
}

// Memory amalloc keeps for itself (pooled frames, epoch batches): from the
// thread's default heap, never from a bound one, which am_heap_destroy
// could free under it.
AM_INLINE void* internal_malloc(size_t size) {
  Heap* h = t_default;
  if (AM_UNLIKELY(h == nullptr) && (h = heap_default()) == nullptr) return nullptr;
  return heap_malloc(h, size);
}

// From heap `h`, or from the calling thread's current heap when h is null.
AM_INLINE void* alloc_from(Heap* h, size_t size) {
  return h ? heap_malloc(h, size) : malloc_fast(size);
}

// Segment map -> slot page -> owner check -> block check -> push. NULL, foreign
// pointers, remote frees and full pages all leave through one branch each.
AM_INLINE void free_fast(void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (AM_UNLIKELY(!segmap_fast(a))) return free_not_ours(p);
  Page* pg = slot_page(a);
  if (AM_UNLIKELY(pg->owner_fast.load(std::memory_order_relaxed) != t_heap))
    return free_slow(p, pg);
  // On the fast path the block lies in its page's first slot, which starts
  // at a 64 KiB boundary: its offset is the low 16 bits.
  uint64_t off = a & (kSlotSize - 1);
  Block* head = pg->free;
  if (AM_UNLIKELY(off * pg->divc >= pg->divc || p == head)) return free_bad_block(p, pg);
  if (AM_UNLIKELY(owner_push(pg, static_cast<Block*>(p), head))) page_emptied(pg);
}

}  // namespace am
