#include "allocator/trim.h"

#include <pthread.h>

#include "allocator/heap.h"
#include "allocator/lock.h"
#include "allocator/page.h"
#include "allocator/segment.h"
#include "allocator/stats.h"

namespace am {

namespace {

// One pass at a time in the process: a slow path that finds a pass running
// skips its own; am_collect waits. (None runs across fork(): a pass holds
// its heap's lock, which fork_prepare takes; a fork child adopts the pages
// of the threads it lost, and a pass caught midway would leave blocks both
// on a free list and marked trimmed.)
pthread_mutex_t g_trim_lock = PTHREAD_MUTEX_INITIALIZER;

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

// A page is trimmed only once a whole pass went by without an allocation
// or a free in it, so that a class in use does not fault its blocks in
// again and again: the mixed workload, whose few blocks above 4 KiB leave
// their pages a quarter live or less while in use, took 16-17 k page
// faults with every such page trimmed, 9 k with this (and without
// trimming).
uint16_t signature(const Page* pg) {
  return static_cast<uint16_t>(pg->used * 40503u ^ (reinterpret_cast<uintptr_t>(pg->free) >> 4));
}

bool idle_since_last_pass(Page* pg) {
  uint16_t sig = signature(pg);
  if (pg->trim_seen == sig) return true;
  pg->trim_seen = sig;
  return false;
}

// Blocks above 4 KiB in a 512 KiB page: fewer than 128.
constexpr unsigned kMaxBlocks = 128;
constexpr unsigned kMaxHot = kHotBytes / kOsPage;

uint64_t* trim_bits(Page* pg) {
  Segment* s = segment_of_page(pg);
  return s->trimmed[pg - s->pages];
}

bool bit(const uint64_t* m, size_t i) { return (m[i / 64] >> (i % 64)) & 1; }

// Gives back the OS pages of the free blocks, until `deadline`
// (os_now_us); returns whether it got through them all. Each run of
// adjacent free blocks goes in one madvise call (a call costs a TLB
// shootdown of every core running the process) and leaves the free list:
// its blocks are marked trimmed, so no link is written into them again
// until page_untrim hands them out. An OS page shared with a block trimmed
// before goes too. The list that stays comes out in address order, after
// the head page's first blocks.
bool trim_page(Page* pg, uint64_t deadline) {
  const size_t bs = pg->block_size;
  // The head page's next allocations take its first free blocks: those
  // stay as they are (64 KiB of them, at least four).
  size_t skip = pg->is_head ? (kHotBytes / bs > 4 ? kHotBytes / bs : 4) : 0;
  Block* hot[kMaxHot + 4];
  unsigned n_hot = 0;
  uint64_t listed[kMaxBlocks / 64] = {};
  for (Block* b = pg->free; b; b = b->next) {
    if (n_hot < skip) {
      hot[n_hot++] = b;
      continue;
    }
    size_t i = static_cast<size_t>(reinterpret_cast<uint8_t*>(b) - pg->start) / bs;
    listed[i / 64] |= uint64_t{1} << (i % 64);
  }
  uint64_t* gone = trim_bits(pg);
  const size_t n = pg->capacity;
  const uintptr_t base = reinterpret_cast<uintptr_t>(pg->start);
  constexpr uintptr_t kMask = kOsPage - 1;
  bool done = true;
  for (size_t i = 0; i < n && done;) {
    if (!bit(listed, i)) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < n && bit(listed, j)) j++;
    // An OS page at either end is shared with the neighbouring block: it
    // goes only if that block is trimmed already. (Past `capacity` the
    // page's memory may hold nothing, but the next carve writes there.)
    uintptr_t lo = base + i * bs, hi = base + j * bs;
    lo = i > 0 && bit(gone, i - 1) ? lo & ~kMask : (lo + kMask) & ~kMask;
    hi = j < n && bit(gone, j) ? (hi + kMask) & ~kMask : hi & ~kMask;
    if (hi > lo) {
      os_purge(reinterpret_cast<void*>(lo), hi - lo);
      for (size_t k = i; k < j; k++) {
        gone[k / 64] |= uint64_t{1} << (k % 64);
        listed[k / 64] &= ~(uint64_t{1} << (k % 64));
      }
      pg->trimmed = static_cast<uint8_t>(pg->trimmed + (j - i));
      stats_add(g_os_stats.trimmed_bytes, hi - lo);
      stats_add(g_class_counters[pg->cls].trimmed_bytes, hi - lo);
      done = os_now_us() < deadline;  // the rest at the next pass
    }
    i = j;
  }
  // The list again: the hot blocks as they were, then the rest.
  Block* head = nullptr;
  for (size_t i = n; i-- > 0;)
    if (bit(listed, i)) {
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

// Span blocks of `h` whose last slot was resident when they were placed:
// what lies past their end goes once the block has lived through a pass
// (a short-lived one would only have it faulted in again by the next block
// placed there). Under g_lock, since any thread may free a large block; a
// pass that finds it taken leaves them to the next. Returns false when out
// of time.
bool trim_span_tails(Heap* h, uint64_t deadline, bool unlimited, bool* did) {
  if (unlimited)
    pthread_mutex_lock(&g_lock);
  else if (pthread_mutex_trylock(&g_lock) != 0)
    return true;
  bool in_time = true;
  for (Page* pg = h->large; pg && in_time; pg = pg->next) {
    if (pg->tail_state == 0) continue;
    *did = true;
    if (pg->tail_state == kTailResident && !unlimited) {
      pg->tail_state = kTailSeen;
      continue;
    }
    pg->tail_state = 0;
    if (size_t n = segment_span_trim_tail_locked(pg)) {
      stats_add(g_os_stats.trimmed_bytes, n);
      in_time = unlimited || os_now_us() < deadline;
    }
  }
  pthread_mutex_unlock(&g_lock);
  return in_time;
}

}  // namespace

Block* page_untrim(Page* pg) {
  uint64_t* t = trim_bits(pg);
  const size_t bs = pg->block_size;
  unsigned want = static_cast<unsigned>(kHotBytes / bs > 0 ? kHotBytes / bs : 1);
  if (want > pg->trimmed) want = pg->trimmed;
  pg->trimmed = static_cast<uint8_t>(pg->trimmed - want);
  // The lowest blocks first: the first is handed out, the rest linked (a
  // fault each, which their allocation would take anyway).
  Block* first = nullptr;
  Block** tail = &first;
  for (unsigned w = 0; w < kMaxBlocks / 64 && want > 0; w++)
    for (; t[w] != 0 && want > 0; want--) {
      size_t i = size_t{w} * 64 + static_cast<size_t>(__builtin_ctzll(t[w]));
      t[w] &= t[w] - 1;
      auto* b = reinterpret_cast<Block*>(pg->start + i * bs);
      *tail = b;
      tail = &b->next;
    }
  *tail = pg->free;
  if (first != nullptr) pg->free = first->next;
  return first;
}

void trim_forget(Page* pg) {
  uint64_t* t = trim_bits(pg);
  t[0] = t[1] = 0;
  pg->trimmed = 0;
}

void trim_heap(Heap* h, uint64_t now, uint32_t max_us) {
  const bool unlimited = max_us == ~uint32_t{0};
  if (unlimited)
    pthread_mutex_lock(&g_trim_lock);
  else if (pthread_mutex_trylock(&g_trim_lock) != 0)
    return;  // another heap's pass: this one at the next slow path
  h->last_trim_us = now;
  const uint64_t deadline = unlimited ? ~uint64_t{0} : now + max_us;
  bool did = false, out_of_time = false;
  unsigned walked = 0;
  unsigned c = h->trim_next_class % kNumClasses;
  for (unsigned k = 0; k < kNumClasses && !out_of_time; k++, c = (c + 1) % kNumClasses) {
    h->trim_next_class = static_cast<uint8_t>(c);
    if (kClassSize[c] <= kOsPage) continue;
    for (Page* pg = h->queues[c].first; pg && !out_of_time;) {
      Page* next = pg->next;
      // The walk itself keeps to the budget too (thousands of pages).
      if (++walked % 64 == 0 && !unlimited && os_now_us() >= deadline) {
        out_of_time = true;
        break;
      }
      page_collect_unwalked(pg);
      if (page_is_empty(pg) && !pg->is_head) {
        heap_page_empty(h, pg);  // the remote frees just collected emptied it
      } else if (wants_trim(pg)) {
        did = true;  // now, or at the next pass if the page stays idle
        // am_collect gives back at once all but the head page.
        if ((unlimited && !pg->is_head) || idle_since_last_pass(pg)) {
          out_of_time = !trim_page(pg, deadline);
          pg->trim_seen = signature(pg);  // its new list is not a use
        }
      }
      pg = next;
    }
  }
  if (!out_of_time) out_of_time = !trim_span_tails(h, deadline, unlimited, &did);
  // A pass that ran out of time comes back first (kTrimBacklogUs), one
  // that did something soon, one that did nothing backs off.
  uint32_t backoff = 2 * h->trim_every_us;
  uint32_t wait = out_of_time                     ? kTrimBacklogUs
                  : did || backoff < kTrimEveryUs ? kTrimEveryUs
                                                  : backoff;
  h->trim_every_us = wait > kTrimMaxWaitUs ? kTrimMaxWaitUs : wait;
  // A long wait is first checked against the coarse clock (cheaper to
  // read), which lags the precise one by its resolution or more (6 ms
  // seen here with a 4 ms tick): no pass is due before this (trim_maybe).
  uint64_t due_ms = (now + h->trim_every_us) / 1000, margin = 2 * os_coarse_resolution_ms() + 2;
  h->trim_gate_ms = h->trim_every_us >= 20000 && due_ms > margin ? due_ms - margin : 0;
  pthread_mutex_unlock(&g_trim_lock);
}

}  // namespace am
