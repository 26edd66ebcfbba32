// The worker's sweeps of heaps whose owner stopped collecting what other
// threads freed into its pages (it neither allocates nor idles: blocked on
// a socket, or done with the heap), so that memory freed anywhere becomes
// reusable in a bounded time, not when the owner next allocates:
//
//   - full pages: their remote frees are collected; emptied pages go back
//     to their segment, the others keep the blocks on `free` for the owner;
//   - queued pages (partly used, not the head of their queue): a page whose
//     every block still counted as used is on its remote list is given
//     back. A page that holds a live block stays the owner's to collect:
//     the owner may be freeing into it on its fast path, which takes no
//     lock. The head of each queue stays too (the fast path allocates from
//     it).
//
// A sweep holds g_lock (which keeps thread exit and heap destruction away)
// and try-locks the heap lock, which the owner takes around every slow
// path and idle point: a sweep never waits for an owner, and an owner
// waits for at most one bounded sweep.
#include "allocator/heap.h"
#include "allocator/page.h"
#include "allocator/queue.h"
#include "allocator/stats.h"

namespace am {

namespace {

constexpr unsigned kSweepPagesPerHeap = 256;  // pages collected a pass: bounds the owner's wait
constexpr unsigned kSweepLookPerHeap = 4096;  // queued pages looked at a pass

void give_back_all_locked(Page* emptied, uint64_t now) {
  // Out of the owner's reach now; freeing them (which may purge or unmap)
  // need not hold up its slow path, so after the heap lock is released.
  while (Page* e = emptied) {
    emptied = e->next;
    stats_add(g_os_stats.swept_pages, 1);
    give_back_locked(e, now);
  }
}

// Full pages: each sweep marks the heaps whose full-page hint is set; a
// heap still marked at the next sweep, kSweepMs later, has its full pages
// collected. `remote_hint` sends the owner to move the pages that kept
// blocks back to its queues at its next slow path or idle point. The hint
// is cleared before the scan, so a free that the scan misses sets it again
// (and wakes the worker). Returns whether to look again.
bool sweep_full(Heap* h, uint64_t now) {
  if (!h->full_remote_hint.load(std::memory_order_seq_cst)) {
    h->sweep_seen = 0;
    return false;
  }
  if (!h->sweep_seen) {  // give the owner a chance first
    h->sweep_seen = 1;
    return true;
  }
  if (!heap_trylock(h)) return true;
  h->full_remote_hint.store(0, std::memory_order_seq_cst);
  h->sweep_seen = 0;
  // The budget counts pages that had frees to collect (a page collected
  // before and untouched since costs only a look), so a later sweep
  // always gets past the pages an earlier one dealt with.
  unsigned budget = kSweepPagesPerHeap;
  bool kept = false;
  Page* emptied = nullptr;
  Page* pg = h->full;
  while (pg && budget > 0) {
    Page* next = pg->next;
    if (page_collect(pg)) {
      budget--;
      if (pg->used == 0) {
        full_remove(h, pg);
        pg->in_full = 0;
        pg->next = emptied;
        emptied = pg;
      } else {
        kept = true;
      }
    }
    pg = next;
  }
  if (pg) {  // out of budget: the rest at the next sweep
    h->full_remote_hint.store(1, std::memory_order_seq_cst);
    h->sweep_seen = 1;
  }
  heap_unlock(h);
  if (kept) h->remote_hint.store(1, std::memory_order_seq_cst);
  give_back_all_locked(emptied, now);
  // Once more: a free during the scan set the hint again, and its wake-up
  // found the worker awake.
  return true;
}

// Whether every block the queued page `pg` counts as used is on its remote
// list (whose length the list's word keeps). The owner's fast-path free stores
// `used` last, with release (alloc_inline.h), and only decreases it
// without the heap lock, so `used` read here is at least the true count:
// equal to the list's count, no block of the page is live, none can be
// freed into it, and the owner has finished every free it made into it.
bool all_freed_remotely(Page* pg) {
  uintptr_t v = pg->xthread_free.load(std::memory_order_acquire);
  if (v == 0 || (v & kXMesh) || pg->meshed) return false;
  return xcount(v) == __atomic_load_n(&pg->used, __ATOMIC_ACQUIRE);
}

// Queued pages: a sweep notes the heaps whose remote hint is set, with the
// number of times their owner has taken its lock. A heap noted kSweepMs or
// more before whose owner has not taken its lock since (no slow path, no
// idle point) has its queues looked at. The hint then goes from 1 to 2: a
// free from then on sets it to 1 again and wakes the worker, so a heap is
// looked at again only after new frees, or where the last look stopped
// for its budget. Returns whether to look again.
bool sweep_queued(Heap* h, uint64_t now) {
  uint8_t hint = h->remote_hint.load(std::memory_order_seq_cst);
  if (hint != 1) {
    h->idle_noted_ms = 0;
    return false;
  }
  if (!heap_trylock(h)) return true;  // the owner is at work: it collects
  if (h->idle_noted_ms == 0 || h->locks != h->locks_seen) {
    h->idle_noted_ms = now;
    h->locks_seen = h->locks;
    heap_unlock(h);
    return true;
  }
  if (now - h->idle_noted_ms < kSweepMs) {
    heap_unlock(h);
    return true;
  }
  h->idle_noted_ms = 0;
  h->remote_hint.compare_exchange_strong(hint, 2, std::memory_order_seq_cst);
  unsigned look = kSweepLookPerHeap, budget = kSweepPagesPerHeap;
  Page* emptied = nullptr;
  bool more = false;
  unsigned c = h->sweep_class % kNumClasses;
  uint32_t skip = h->sweep_skip;  // pages of class c kept by the last look
  for (unsigned k = 0; k < kNumClasses && !more; k++, c = (c + 1) % kNumClasses, skip = 0) {
    h->sweep_class = static_cast<uint8_t>(c);
    uint32_t kept = 0;
    for (Page* pg = h->queues[c].first; pg;) {
      Page* next = pg->next;
      if (kept < skip) {  // a look, but no budget: they were looked at
        kept++;
        pg = next;
        continue;
      }
      if (look == 0 || budget == 0) {
        more = true;  // from here at the next sweep
        break;
      }
      look--;
      if (!pg->is_head && all_freed_remotely(pg)) {
        budget--;
        page_collect(pg);
        queue_remove(h, pg);
        pg->next = emptied;
        emptied = pg;
      } else {
        kept++;
      }
      pg = next;
    }
    h->sweep_skip = more ? kept : 0;
  }
  if (more) h->remote_hint.store(1, std::memory_order_seq_cst);
  heap_unlock(h);
  give_back_all_locked(emptied, now);
  // A free during the walk set the hint to 1 again, and its wake-up found
  // the worker awake: look again.
  return more || h->remote_hint.load(std::memory_order_seq_cst) == 1;
}

}  // namespace

bool sweep_owners_locked(uint64_t now) {
  bool again = false;
  for (Heap* h = heaps_first_locked(); h; h = h->next) {
    if (!h->live) continue;
    again |= sweep_full(h, now);
    again |= sweep_queued(h, now);
  }
  return again;
}

}  // namespace am
