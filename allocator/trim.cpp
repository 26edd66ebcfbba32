#include "allocator/trim.h"

#include "allocator/heap.h"
#include "allocator/page.h"
#include "allocator/segment.h"
#include "allocator/stats.h"

namespace am {

namespace {

constexpr size_t kHotBytes = 64 * 1024;
static_assert(kSlotSize * kMediumSpan / (kOsPage + 16) < 128, "trim_page's bitmap");

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

// Blocks above 4 KiB in a 512 KiB page: fewer than 128.
constexpr unsigned kMaxBlocks = 128;
constexpr unsigned kMaxHot = kHotBytes / kOsPage;

// Gives back the OS pages inside the free blocks, until `deadline`
// (os_now_us); returns whether it got through them all. Each run of
// adjacent free blocks goes in one madvise call, their links included,
// which are written again afterwards (a fault each): a call costs a TLB
// shootdown of every core running the process, a fault does not. The free
// list comes out in address order, after the head page's first blocks.
bool trim_page(Page* pg, uint64_t deadline) {
  const size_t bs = pg->block_size;
  // The head page's next allocations take its first free blocks: those
  // stay as they are (64 KiB of them, at least four).
  size_t skip = pg->is_head ? (kHotBytes / bs > 4 ? kHotBytes / bs : 4) : 0;
  Block* hot[kMaxHot + 4];
  unsigned n_hot = 0;
  uint64_t is_free[kMaxBlocks / 64] = {};
  for (Block* b = pg->free; b; b = b->next) {
    if (n_hot < skip) {
      hot[n_hot++] = b;
      continue;
    }
    size_t i = static_cast<size_t>(reinterpret_cast<uint8_t*>(b) - pg->start) / bs;
    is_free[i / 64] |= uint64_t{1} << (i % 64);
  }
  auto free_at = [&](size_t i) { return (is_free[i / 64] >> (i % 64)) & 1; };
  const size_t n = pg->capacity;
  bool done = true;
  for (size_t i = 0; i < n && done;) {
    if (!free_at(i)) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < n && free_at(j)) j++;
    uintptr_t lo = (reinterpret_cast<uintptr_t>(pg->start + i * bs) + kOsPage - 1) & ~(kOsPage - 1);
    uintptr_t hi = reinterpret_cast<uintptr_t>(pg->start + j * bs) & ~(kOsPage - 1);
    if (hi > lo) {
      os_purge(reinterpret_cast<void*>(lo), hi - lo);
      size_t relinked = 0;  // link pages that fault in again below
      for (size_t k = i; k < j; k++) {
        uintptr_t link = reinterpret_cast<uintptr_t>(pg->start + k * bs) & ~(kOsPage - 1);
        relinked += link >= lo && link < hi;
      }
      size_t gone = hi - lo - relinked * kOsPage;
      stats_add(g_os_stats.trimmed_bytes, gone);
      stats_add(g_class_counters[pg->cls].trimmed_bytes, gone);
      done = os_now_us() < deadline;  // the rest at the next pass
    }
    i = j;
  }
  // The list again: the hot blocks as they were, then the rest.
  Block* head = nullptr;
  for (size_t i = n; i-- > 0;)
    if (free_at(i)) {
      auto* b = reinterpret_cast<Block*>(pg->start + i * bs);
      b->next = head;
      head = b;
    }
  for (unsigned k = n_hot; k-- > 0;) {
    hot[k]->next = head;
    head = hot[k];
  }
  pg->free = head;
  if (done) pg->trim_used = static_cast<uint16_t>(pg->used);
  return done;
}

}  // namespace

void trim_heap(Heap* h, uint64_t now, uint32_t max_us) {
  h->last_trim_ms = now;
  const uint64_t deadline = max_us == ~uint32_t{0} ? ~uint64_t{0} : os_now_us() + max_us;
  bool did = false, out_of_time = false;
  unsigned c = h->trim_next_class % kNumClasses;
  for (unsigned k = 0; k < kNumClasses && !out_of_time; k++, c = (c + 1) % kNumClasses) {
    h->trim_next_class = static_cast<uint8_t>(c);
    if (kClassSize[c] <= kOsPage) continue;
    for (Page* pg = h->queues[c].first; pg && !out_of_time;) {
      Page* next = pg->next;
      page_collect(pg);
      if (page_is_empty(pg) && !pg->is_head) {
        heap_page_empty(h, pg);  // the remote frees just collected emptied it
      } else if (wants_trim(pg) && (!pg->is_head || idle_since_last_pass(pg))) {
        did = true;
        out_of_time = !trim_page(pg, deadline);
      }
      pg = next;
    }
  }
  // A pass that did nothing backs off; one that did comes back soon.
  uint32_t wait = did ? kTrimEveryMs : 2 * h->trim_every_ms;
  h->trim_every_ms = wait < kTrimEveryMs     ? kTrimEveryMs
                     : wait > kTrimMaxWaitMs ? kTrimMaxWaitMs
                                             : wait;
}

}  // namespace am
