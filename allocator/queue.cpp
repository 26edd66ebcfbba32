// A heap's page queues (one per size class, whose head the direct table
// points at) and its full list: the owner's slow-path bookkeeping, all
// under the heap lock (heap.h).
#include "allocator/queue.h"

#include "allocator/heap.h"
#include "allocator/trim.h"

namespace am {

namespace {

// Direct-table slots of each class: [first, first + count).
struct DirectRange {
  uint8_t first, count;
};
constexpr std::array<DirectRange, kNumClasses> make_direct_ranges() {
  std::array<DirectRange, kNumClasses> r{};
  for (size_t i = 0; i < kDirectSlots; i++) {
    unsigned c = kDirectClass[i];
    if (r[c].count == 0) r[c].first = static_cast<uint8_t>(i);
    r[c].count++;
  }
  return r;
}
constexpr std::array<DirectRange, kNumClasses> kDirectRange = make_direct_ranges();

// The head carries the used bias and is what the direct table points at.
void head_changed(Heap* h, unsigned cls, Page* old_head) {
  Page* head = h->queues[cls].first;
  if (old_head == head) return;
  if (old_head) {
    old_head->is_head = 0;
    old_head->used--;
  }
  if (head) {
    head->is_head = 1;
    head->used++;
    head->trim_used = 0;  // allocated from again: trimmed afresh when it thins out
  }
  const DirectRange r = kDirectRange[cls];
  Page* target = head ? head : &g_empty_page;
  for (unsigned i = 0; i < r.count; i++) h->direct[r.first + i] = target;
}

}  // namespace

void queue_push_back(Heap* h, Page* pg) {
  PageQueue& q = h->queues[pg->cls];
  Page* old = q.first;
  pg->next = nullptr;
  pg->prev = q.last;
  if (q.last)
    q.last->next = pg;
  else
    q.first = pg;
  q.last = pg;
  head_changed(h, pg->cls, old);
}

void queue_remove(Heap* h, Page* pg) {
  PageQueue& q = h->queues[pg->cls];
  Page* old = q.first;
  if (pg->prev)
    pg->prev->next = pg->next;
  else
    q.first = pg->next;
  if (pg->next)
    pg->next->prev = pg->prev;
  else
    q.last = pg->prev;
  pg->next = pg->prev = nullptr;
  head_changed(h, pg->cls, old);
}

// Allocation goes on in the fullest of the next few pages, so that sparse
// pages receive no new blocks, drain, and are given back: defragmentation
// that moves nothing. Pages of one class have the same capacity, so the
// live-block counts compare directly.
constexpr unsigned kFullestScan = 8;

static void queue_prefer_fullest(Heap* h, unsigned cls) {
  PageQueue& q = h->queues[cls];
  Page* head = q.first;
  if (!head || !head->next) return;
  Page* best = head;
  uint32_t best_live = head->used - head->is_head;
  unsigned k = 0;
  for (Page* pg = head->next; pg && k < kFullestScan; pg = pg->next, k++)
    if (pg->used > best_live) {
      best = pg;
      best_live = pg->used;
    }
  if (best == head) return;
  // Unlink `best` and put it first; head_changed moves the bias.
  best->prev->next = best->next;
  if (best->next)
    best->next->prev = best->prev;
  else
    q.last = best->prev;
  best->prev = nullptr;
  best->next = head;
  head->prev = best;
  q.first = best;
  head_changed(h, cls, head);
}

static void full_push(Heap* h, Page* pg) {
  pg->prev = nullptr;
  pg->next = h->full;
  if (h->full) h->full->prev = pg;
  h->full = pg;
}

void full_remove(Heap* h, Page* pg) {
  if (pg->prev)
    pg->prev->next = pg->next;
  else
    h->full = pg->next;
  if (pg->next) pg->next->prev = pg->prev;
  pg->next = pg->prev = nullptr;
}

// A page with nothing left to hand out leaves the queue, unless remote
// frees arrived meanwhile: setting kXFull only on an empty remote list
// means a freer either sees the flag in its push, and raises the heap's
// hint, or pushed first and the page stays in the queue.
void page_to_full(Heap* h, Page* pg) {
  queue_remove(h, pg);
  queue_prefer_fullest(h, pg->cls);
  uintptr_t none = 0;
  if (!pg->xthread_free.compare_exchange_strong(none, kXFull, std::memory_order_seq_cst)) {
    queue_push_back(h, pg);
    return;
  }
  pg->owner_fast.store(nullptr, std::memory_order_relaxed);
  pg->in_full = 1;
  full_push(h, pg);
}

// Pages with remote frees leave the full list (or with free blocks: a
// sweep collected their remote frees).
void unfull_remote(Heap* h) {
  h->full_remote_hint.store(0, std::memory_order_seq_cst);
  Page* pg = h->full;
  while (pg) {
    Page* next = pg->next;
    if (xcount(pg->xthread_free.load(std::memory_order_seq_cst)) != 0 || pg->free)
      heap_page_unfull(h, pg);
    pg = next;
  }
}

void heap_page_unfull(Heap* h, Page* pg) {
  full_remove(h, pg);
  pg->in_full = 0;
  pg->xthread_free.fetch_and(~kXFull, std::memory_order_seq_cst);
  pg->owner_fast.store(h, std::memory_order_relaxed);
  queue_push_back(h, pg);
  // Frees into full pages: pages may turn sparse.
  if (pg->block_size > kOsPage) trim_soon(h);
}

}  // namespace am
