// Demand-predictive preallocation. Each heap counts the pages it takes per
// size class; every few milliseconds of activity the background worker
// compares the counts with its last look and, for each class in a burst
// (kBurstPages or more in one tick), builds the larger of that demand and
// the class's remembered peak (capped at kReadyBytes per class),
// carved and faulted in, onto the heap's `ready` stack. The owner's
// page_new pops one page from it before it would cut a fresh page. A class that needs nothing for
// kReleaseTicks ticks gets its ready pages released and purged. So a burst's page
// faults are taken on the worker's CPU, not on the request path.
#include "allocator/predict.h"

#include "allocator/background.h"
#include "allocator/heap.h"
#include "allocator/lock.h"
#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/page.h"
#include "allocator/queue.h"
#include "allocator/segment.h"
#include "allocator/stats.h"

namespace am {

std::atomic<uint64_t> g_prefill_built, g_prefill_used, g_prefill_released, g_ready_bytes;

namespace {

constexpr uint64_t kTickMs = 2;
constexpr uint32_t kReleaseTicks = 50;  // 100 ms without demand
constexpr size_t kReadyBytes = 2 << 20;
constexpr int kMaxWants = 64;
// A class that needs fewer pages than this in a tick is not in a burst:
// a trickle of page faults is cheap, a reserve for it is not.
constexpr uint32_t kBurstPages = 3;

size_t page_bytes(unsigned cls) {
  return class_is_small(cls) ? kSlotSize : kSlotSize * kMediumSpan;
}

uint32_t max_ready(unsigned cls) {
  size_t n = kReadyBytes / page_bytes(cls);
  return n ? static_cast<uint32_t>(n) : 1;
}

// A free slot made a page of `cls` for `h`, every block carved, its memory
// faulted in. Reachable by no one until the caller publishes it.
Page* build_page(Heap* h, unsigned cls) {
  Page* pg;
  {
    LockGuard g;
    pg = segment_page_alloc_locked(class_is_small(cls) ? kKindSmall : kKindMedium);
  }
  if (!pg) return nullptr;
  stats_add(g_ready_bytes, page_bytes(cls));  // the reserve, from now until taken
  page_init(pg, cls, h);
  // Touch every OS page first: blocks above 4 KiB leave some untouched.
  volatile uint8_t* p = pg->start;
  size_t bytes = size_t{pg->reserved} * pg->block_size;
  for (size_t off = 0; off < bytes; off += kOsPage) p[off] = 0;
  while (page_extend(pg)) {
  }
  stats_add(g_prefill_built, 1);
  return pg;
}

void push_ready(Heap* h, unsigned cls, Page* pg) {
  Page* old = h->ready[cls].load(std::memory_order_relaxed);
  do {
    pg->next = old;
  } while (!h->ready[cls].compare_exchange_weak(old, pg, std::memory_order_release,
                                                std::memory_order_relaxed));
  h->ready_count[cls].fetch_add(1, std::memory_order_relaxed);
}

// Frees a detached list of ready pages, purged: the burst they were built
// for did not come. Under g_lock.
void free_list_locked(Page* pg, uint64_t now) {
  while (pg) {
    Page* next = pg->next;
    segment_page_free_purged_locked(pg, now);
    stats_add(g_prefill_released, 1);
    pg = next;
  }
}

Page* detach(Heap* h, unsigned cls) {
  if (!h->ready[cls].load(std::memory_order_relaxed)) return nullptr;
  Page* list = h->ready[cls].exchange(nullptr, std::memory_order_acquire);
  uint32_t n = 0;
  for (Page* p = list; p; p = p->next) n++;
  h->ready_count[cls].fetch_sub(n, std::memory_order_relaxed);
  stats_sub(g_ready_bytes, n * page_bytes(cls));
  return list;
}

}  // namespace

// One page at a time, so that pages other threads freed into are used
// before more fresh ones. Only the owner pops, so a popped page cannot come
// back between the load and the CAS (no ABA).
Page* ready_take(Heap* h, unsigned cls) {
  Page* pg = h->ready[cls].load(std::memory_order_acquire);
  while (pg && !h->ready[cls].compare_exchange_weak(pg, pg->next, std::memory_order_acquire,
                                                    std::memory_order_acquire)) {
  }
  if (!pg) return nullptr;
  h->ready_count[cls].fetch_sub(1, std::memory_order_relaxed);
  stats_sub(g_ready_bytes, page_bytes(cls));
  pg->next = nullptr;
  stats_add(g_prefill_used, 1);
  return pg;
}

void ready_drop_locked(Heap* h, uint64_t now) {
  for (unsigned c = 0; c < kNumClasses; c++) free_list_locked(detach(h, c), now);
}

uint64_t predict_tick(uint64_t now) {
  if (!g_options.predict) return kNeverMs;
  struct Want {
    Heap* h;
    unsigned cls;
    uint32_t pages;
  };
  Want wants[kMaxWants];
  int n = 0;
  bool active = false;
  {
    LockGuard g;
    for (Heap* h = heaps_first_locked(); h; h = h->next) {
      if (!h->live) continue;
      for (unsigned c = 0; c < kNumClasses; c++) {
        uint32_t taken = h->new_pages[c].load(std::memory_order_relaxed);
        uint32_t delta = taken - h->seen_pages[c];
        h->seen_pages[c] = taken;
        uint32_t have = h->ready_count[c].load(std::memory_order_relaxed);
        if (delta >= kBurstPages || (delta && have)) {
          // A burst that starts again is met at the rate the last one
          // reached, not ramped up from one page.
          active = true;
          h->quiet_ticks[c] = 0;
          if (delta > h->peak_rate[c])
            h->peak_rate[c] = static_cast<uint16_t>(delta < 0xffff ? delta : 0xffff);
          uint32_t target = delta > h->peak_rate[c] ? delta : h->peak_rate[c];
          if (target > max_ready(c)) target = max_ready(c);
          if (target > have && n < kMaxWants) wants[n++] = {h, c, target - have};
        } else if (have || h->peak_rate[c]) {
          active = active || have;
          if (++h->quiet_ticks[c] % kReleaseTicks == 0) {
            free_list_locked(detach(h, c), now);
            h->peak_rate[c] -= h->peak_rate[c] / 4 + (h->peak_rate[c] < 4);  // forget slowly
          }
        }
      }
    }
  }
  // Build outside the lock (the faults are the slow part), then publish
  // under it, where heap teardown cannot run.
  for (int i = 0; i < n; i++) {
    for (uint32_t k = 0; k < wants[i].pages; k++) {
      Page* pg = build_page(wants[i].h, wants[i].cls);
      if (!pg) return now + kTickMs;
      LockGuard g;
      if (wants[i].h->live) {
        push_ready(wants[i].h, wants[i].cls, pg);
      } else {
        stats_sub(g_ready_bytes, page_bytes(wants[i].cls));
        pg->next = nullptr;
        free_list_locked(pg, now);
      }
    }
  }
  return active ? now + kTickMs : kNeverMs;
}

size_t prefill(Heap* h, unsigned cls, size_t pages) {
  size_t made = 0;
  for (; made < pages; made++) {
    Page* pg = build_page(h, cls);
    if (!pg) break;
    stats_sub(g_ready_bytes, page_bytes(cls));
    queue_push_back(h, pg);
  }
  return made;
}

}  // namespace am
