// Demand-predictive preallocation. Each heap counts the pages it takes per
// size class; every few milliseconds of activity the background worker
// compares the counts with its last look and, for each class in a burst
// (kBurstPages or more in one tick), builds the larger of that demand and
// the class's remembered peak (capped at kReadyBytes per class),
// carved and faulted in, onto the heap's `ready` stack. The owner's
// page_new pops one page from it before it would cut a fresh page. So a
// burst's page faults are taken on the worker's CPU, not on the request
// path, as far as the worker has a CPU to take them on.
//
// The reserve: pages that empty (of any class) are kept whole and
// resident, on a per-class list that every heap takes from
// (reserve_keep_locked, reserve_take_locked), up to the bytes the last
// episode of demand took, instead of going back to their segments,
// where the purge would return them. A burst that comes back takes them
// without a fault even when every core is busy, whichever thread its work
// lands on. Pages built ahead and not taken for kUnusedMs, and a class's
// reserve after kHoldMs without demand, are released and purged.
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
#include "allocator/trim.h"

namespace am {

std::atomic<uint64_t> g_prefill_built, g_prefill_used, g_prefill_released, g_ready_bytes,
    g_reserve_kept;

namespace {

constexpr uint64_t kTickMs = 2;
constexpr uint32_t kReleaseTicks = 50;   // the peak is forgotten by a quarter per 50 quiet ticks
constexpr uint64_t kUnusedMs = 100;      // pages built ahead and not taken this long are released
constexpr uint64_t kHoldMs = 3000;       // the reserve outlives a quiet phase this long
constexpr uint32_t kReleasePerTick = 8;  // reserve pages released per class and tick
constexpr uint64_t kEpisodeGapMs = 100;  // demand that pauses longer ends an episode
constexpr size_t kReadyBytes = 2 << 20;
constexpr size_t kReserveBytes = size_t{1} << 30;  // the largest reserve
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

namespace {

// The reserve, per class (under g_lock): empty pages owned by no heap. All
// classes together hold at most the bytes of pages the last episode of
// demand took: the pages all heaps took (fresh, built ahead or from the
// reserve) until kEpisodeGapMs pass without one (a tick or two without a
// page is a dip, not an end). Pages a burst reuses from its heaps' queues
// are not counted, so a burst the reserve served counts less than it used:
// the size remembered falls by a quarter per episode at most.
Page* g_reserve[kNumClasses];
uint32_t g_reserve_count[kNumClasses];
uint32_t g_reserve_taken[kNumClasses];    // since the last tick
uint64_t g_class_demand_ms[kNumClasses];  // the last tick with demand, per class
size_t g_reserve_bytes;
size_t g_episode_bytes, g_last_episode_bytes;
// Bytes of cold pages taken, counted by the heaps as they take them, and
// the count at the worker's last tick: demand the worker has not seen yet
// (it may lag on busy cores, SCHED_BATCH) still sizes the reserve.
std::atomic<size_t> g_cold_bytes;
size_t g_cold_bytes_seen;
uint64_t g_demand_ms;  // the last tick with demand in any class

}  // namespace

bool reserve_keep_locked(Page* pg) {
  // Only the worker releases a reserve.
  if (!g_options.predict || pg->meshed || !background_running()) return false;
  unsigned c = pg->cls;
  size_t episode =
      g_episode_bytes + (g_cold_bytes.load(std::memory_order_relaxed) - g_cold_bytes_seen);
  size_t cap = g_last_episode_bytes > episode ? g_last_episode_bytes : episode;
  if (g_reserve_bytes + page_bytes(c) > cap) return false;
  g_reserve_bytes += page_bytes(c);
  pg->heap.store(nullptr, std::memory_order_relaxed);
  pg->owner_fast.store(nullptr, std::memory_order_relaxed);
  pg->xthread_free.store(0, std::memory_order_relaxed);
  pg->in_full = 0;
  // Carved again in address order as it is used (its memory stays
  // resident): the order frees left would scatter the next burst's blocks.
  pg->free = nullptr;
  pg->capacity = 0;
  pg->trim_used = 0;
  trim_forget(pg);
  pg->next = g_reserve[c];
  g_reserve[c] = pg;
  stats_add(g_ready_bytes, page_bytes(c));
  stats_add(g_reserve_kept, 1);
  // No kick: the worker's next pass (within a second) sees the reserve and
  // sets its release; a kick per page preempted the threads it serves.
  g_reserve_count[c]++;
  return true;
}

Page* reserve_take_locked(Heap* h, unsigned cls) {
  Page* pg = g_reserve[cls];
  if (!pg) return nullptr;
  g_reserve[cls] = pg->next;
  g_reserve_count[cls]--;
  g_reserve_taken[cls]++;
  g_reserve_bytes -= page_bytes(cls);
  stats_sub(g_ready_bytes, page_bytes(cls));
  stats_add(g_prefill_used, 1);
  pg->next = pg->prev = nullptr;
  pg->heap.store(h, std::memory_order_release);
  pg->owner_fast.store(h, std::memory_order_relaxed);
  return pg;
}

namespace {

// Releases up to `max` pages of a class's reserve (each is purged under
// g_lock: a few at a time keep the lock's hold short for page_new).
void reserve_release_locked(unsigned c, uint64_t now, uint32_t max) {
  while (g_reserve[c] && max-- > 0) {
    Page* pg = g_reserve[c];
    g_reserve[c] = pg->next;
    pg->next = nullptr;
    g_reserve_count[c]--;
    g_reserve_bytes -= page_bytes(c);
    stats_sub(g_ready_bytes, page_bytes(c));
    free_list_locked(pg, now);
  }
}

}  // namespace

void reserve_drop_locked(uint64_t now) {
  for (unsigned c = 0; c < kNumClasses; c++) reserve_release_locked(c, now, ~uint32_t{0});
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
  uint64_t next = kNeverMs;  // the earliest release of a reserve
  {
    LockGuard g;
    uint32_t demand[kNumClasses] = {};
    for (Heap* h = heaps_first_locked(); h; h = h->next) {
      if (!h->live) continue;
      for (unsigned c = 0; c < kNumClasses; c++) {
        uint32_t taken = h->new_pages[c].load(std::memory_order_relaxed);
        uint32_t delta = taken - h->seen_pages[c];
        h->seen_pages[c] = taken;
        uint32_t have = h->ready_count[c].load(std::memory_order_relaxed);
        if (delta) h->last_demand_ms[c] = now;
        demand[c] += delta;
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
          if (have) {  // pages built for a burst that did not come
            uint64_t due = h->last_demand_ms[c] + kUnusedMs;
            if (now >= due)
              free_list_locked(detach(h, c), now);
            else if (due < next)
              next = due;
          }
          if (++h->quiet_ticks[c] % kReleaseTicks == 0)
            h->peak_rate[c] -= h->peak_rate[c] / 4 + (h->peak_rate[c] < 4);  // forget slowly
        }
      }
    }
    g_cold_bytes_seen = g_cold_bytes.load(std::memory_order_relaxed);
    size_t d_bytes = 0;
    for (unsigned c = 0; c < kNumClasses; c++) {
      uint32_t d = demand[c] + g_reserve_taken[c];
      g_reserve_taken[c] = 0;
      if (d) g_class_demand_ms[c] = now;
      d_bytes += d * page_bytes(c);
      if (!g_reserve[c]) continue;
      uint64_t due = g_class_demand_ms[c] + kHoldMs;
      if (now >= due) {
        reserve_release_locked(c, now, kReleasePerTick);
        if (g_reserve[c]) next = now + kTickMs;
      } else if (due < next) {
        next = due;
      }
    }
    if (d_bytes) {
      g_demand_ms = now;
      g_episode_bytes =
          g_episode_bytes + d_bytes < kReserveBytes ? g_episode_bytes + d_bytes : kReserveBytes;
    } else if (g_episode_bytes && now - g_demand_ms >= kEpisodeGapMs) {
      size_t kept = g_last_episode_bytes - g_last_episode_bytes / 4;
      g_last_episode_bytes = g_episode_bytes > kept ? g_episode_bytes : kept;
      g_episode_bytes = 0;
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
  return active ? now + kTickMs : next;
}

void predict_count_cold(unsigned cls) {
  g_cold_bytes.fetch_add(page_bytes(cls), std::memory_order_relaxed);
}

size_t prefill(Heap* h, unsigned cls, size_t pages) {
  size_t made = 0;
  for (; made < pages; made++) {
    Page* pg = build_page(h, cls);
    if (!pg) break;
    stats_sub(g_ready_bytes, page_bytes(cls));
    HeapLock lock(h);
    queue_push_back(h, pg);
  }
  return made;
}

}  // namespace am
