#include "allocator/trim.h"

#include "allocator/heap.h"
#include "allocator/page.h"
#include "allocator/segment.h"
#include "allocator/stats.h"

namespace am {

namespace {

constexpr size_t kHotBytes = 64 * 1024;

// Worth a look: blocks with whole OS pages inside, a quarter live or less,
// and not trimmed since an eighth of its blocks more were freed (a trimmed
// page keeps its used count in trim_used; 0 for a page never trimmed since
// it was last its queue's head, queue.cpp).
bool wants_trim(const Page* pg) {
  return pg->block_size > kOsPage && pg->used > 0 && pg->used * 4 <= pg->capacity &&
         (pg->trim_used == 0 || pg->used + pg->reserved / 8 <= pg->trim_used) &&
         !segment_of_page(pg)->file_backed;
}

// The head page takes every allocation of its class: it is trimmed only
// once a whole pass went by without one (or a free), so that a class in
// use does not fault its blocks in again and again.
bool idle_since_last_pass(Page* pg) {
  auto sig =
      static_cast<uint16_t>(pg->used * 40503u ^ (reinterpret_cast<uintptr_t>(pg->free) >> 4));
  if (pg->trim_seen == sig) return true;
  pg->trim_seen = sig;
  return false;
}

// Gives back the OS pages inside each free block, past its link. Returns
// the madvise calls made.
uint32_t trim_page(Page* pg) {
  uint32_t calls = 0;
  // The head page's next allocations take its first free blocks: those
  // stay (64 KiB of them, at least four).
  size_t skip = pg->is_head ? (kHotBytes / pg->block_size > 4 ? kHotBytes / pg->block_size : 4) : 0;
  for (Block* b = pg->free; b; b = b->next) {
    if (skip) {
      skip--;
      continue;
    }
    uintptr_t lo = (reinterpret_cast<uintptr_t>(b) + sizeof(Block) + kOsPage - 1) & ~(kOsPage - 1);
    uintptr_t hi = (reinterpret_cast<uintptr_t>(b) + pg->block_size) & ~(kOsPage - 1);
    if (hi <= lo) continue;
    os_purge(reinterpret_cast<void*>(lo), hi - lo);
    stats_add(g_os_stats.trimmed_bytes, hi - lo);
    stats_add(g_class_counters[pg->cls].trimmed_bytes, hi - lo);
    calls++;
  }
  pg->trim_used = static_cast<uint16_t>(pg->used);
  return calls;
}

}  // namespace

void trim_heap(Heap* h, uint64_t now, uint32_t max_calls) {
  h->last_trim_ms = now;
  uint32_t calls = 0;
  unsigned c = h->trim_next_class % kNumClasses;
  for (unsigned k = 0; k < kNumClasses && calls < max_calls; k++, c = (c + 1) % kNumClasses) {
    h->trim_next_class = static_cast<uint8_t>(c);
    if (kClassSize[c] <= kOsPage) continue;
    for (Page* pg = h->queues[c].first; pg && calls < max_calls;) {
      Page* next = pg->next;
      page_collect(pg);
      if (page_is_empty(pg) && !pg->is_head)
        heap_page_empty(h, pg);  // the remote frees just collected emptied it
      else if (wants_trim(pg) && (!pg->is_head || idle_since_last_pass(pg)))
        calls += trim_page(pg);
      pg = next;
    }
  }
  // A pass that did nothing backs off; one that did comes back soon.
  uint32_t wait = calls ? kTrimEveryMs : 2 * h->trim_every_ms;
  h->trim_every_ms = wait < kTrimEveryMs     ? kTrimEveryMs
                     : wait > kTrimMaxWaitMs ? kTrimMaxWaitMs
                                             : wait;
}

}  // namespace am
