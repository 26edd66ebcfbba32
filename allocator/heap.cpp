#include "allocator/heap.h"

#include <errno.h>
#include <pthread.h>

#include <cstring>
#include <utility>

#include "allocator/background.h"
#include "allocator/large.h"
#include "allocator/lock.h"
#include "allocator/mesh.h"
#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/page.h"
#include "allocator/predict.h"
#include "allocator/queue.h"
#include "allocator/segment.h"
#include "allocator/stats.h"
#include "allocator/trim.h"

namespace am {

void global_init();  // init.cpp

constinit Page g_empty_page{};

namespace {

template <size_t... I>
constexpr std::array<Page*, kDirectSlots> empty_direct(std::index_sequence<I...>) {
  return {{((void)I, &g_empty_page)...}};
}

}  // namespace

constinit Heap g_empty_heap{.direct = empty_direct(std::make_index_sequence<kDirectSlots>())};
__thread Heap* t_heap __attribute__((tls_model("initial-exec"))) = &g_empty_heap;
__thread Heap* t_default __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

pthread_key_t g_heap_key;
pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
// Whether this thread has set the key (so that its destructor runs).
__thread bool t_key_set __attribute__((tls_model("initial-exec")));
Heap* g_heaps;      // every heap ever made (heaps are never unmapped)
Heap* g_heap_pool;  // heaps whose thread ended
uint8_t* g_heap_chunk;
size_t g_heap_chunk_left;
Page* g_abandoned[kNumClasses];

void make_key() { pthread_key_create(&g_heap_key, heap_thread_exit); }

// At start-up as well as on first use: a fork that caught another thread
// inside pthread_once would leave the child waiting on it for ever.
__attribute__((constructor(102))) void heap_start() { pthread_once(&g_key_once, make_key); }

void retire(Page* pg) {
  LockGuard g;
  give_back_locked(pg, os_now_ms());
}

AM_INLINE void* pop(Page* pg) {
  Block* b = pg->free;
  pg->free = b->next;
  pg->used++;
  return b;
}

// Sweep pages left by exited threads: collect their remote frees and give
// back the ones that became empty. Under g_lock.
void sweep_abandoned_locked(uint64_t now) {
  for (unsigned c = 0; c < kNumClasses; c++) {
    Page** link = &g_abandoned[c];
    while (Page* pg = *link) {
      page_collect_unwalked(pg);
      if (pg->used == 0) {
        *link = pg->next;
        give_back_locked(pg, now);
      } else {
        link = &pg->next;
      }
    }
  }
}

// Demand for the predictor: pages that would have faulted (only this
// thread writes the count). The worker is woken only when the predictor is
// on: a wake-up per cold page made the worker preempt the allocating
// threads all through a burst.
static void count_cold_page(Heap* h, unsigned cls) {
  h->new_pages[cls].store(h->new_pages[cls].load(std::memory_order_relaxed) + 1,
                          std::memory_order_relaxed);
  if (g_options.predict) {
    predict_count_cold(cls);
    background_kick();
  }
}

// A page for class `cls`, from the cheapest source first: one abandoned by
// an exited thread, a free slot whose memory is still resident, one the
// predictor made ready, and last a slot that will fault.
Page* page_new(Heap* h, unsigned cls) {
  uint8_t kind = class_is_small(cls) ? kKindSmall : kKindMedium;
  Page* pg;
  bool adopted = false, reserved = false;
  {
    LockGuard g;
    // Only thread heaps adopt: an application heap owns exactly what it
    // allocated, so that am_heap_destroy frees nothing of anyone else's.
    pg = h->is_default ? g_abandoned[cls] : nullptr;
    if (pg) {
      g_abandoned[cls] = pg->next;
      adopted = true;
    } else if ((pg = reserve_take_locked(h, cls))) {
      reserved = true;
    } else {
      pg = segment_page_alloc_locked(kind, true);
    }
  }
  if (reserved) {  // carved and resident: nothing to build ahead for yet
    stats_add(g_class_counters[cls].pages_reserve, 1);
    queue_push_back(h, pg);
    return pg;
  }
  if (!pg) {
    // Every page from here on is demand the predictor serves.
    count_cold_page(h, cls);
    if ((pg = ready_take(h, cls))) {
      stats_add(g_class_counters[cls].pages_ready, 1);
      queue_push_back(h, pg);
      return pg;
    }
    LockGuard g;
    pg = segment_page_alloc_locked(kind);
    if (!pg) return nullptr;
    stats_add(g_class_counters[cls].pages_cold, 1);
  }
  if (adopted) {
    pg->heap.store(h, std::memory_order_release);
    pg->owner_fast.store(h, std::memory_order_relaxed);
    pg->next = pg->prev = nullptr;
    page_collect(pg);
    pg->trim_used = pg->trim_seen = 0;  // measured afresh by its new owner
    h->pages_adopted++;
  } else {
    page_init(pg, cls, h);  // blocks are carved as they are needed
  }
  queue_push_back(h, pg);
  return pg;
}

void heap_reset(Heap* h) {
  for (auto& d : h->direct) d = &g_empty_page;
  memset(static_cast<void*>(h->queues), 0, sizeof h->queues);
  h->full = nullptr;
  h->full_remote_hint.store(0, std::memory_order_relaxed);
  // Not the lock: heap_fork_prepare may hold it (a pooled heap), and an
  // unused heap's lock is free otherwise.
  h->sweep_seen = h->sweep_class = 0;
  h->sweep_skip = 0;
  h->idle_noted_ms = 0;
  h->locks = h->locks_seen = 0;
}

Heap* heap_carve_locked() {
  if (Heap* h = g_heap_pool) {
    g_heap_pool = h->pool_next;
    return h;
  }
  size_t sz = (sizeof(Heap) + 63) & ~size_t{63};
  if (g_heap_chunk_left < sz) {
    constexpr size_t kChunk = 256 * 1024;
    g_heap_chunk = static_cast<uint8_t*>(os_map_aligned(kChunk, kOsPage));
    if (!g_heap_chunk) return nullptr;
    g_heap_chunk_left = kChunk;
  }
  Heap* h = reinterpret_cast<Heap*>(g_heap_chunk);
  g_heap_chunk += sz;
  g_heap_chunk_left -= sz;
  h->next = g_heaps;
  g_heaps = h;
  return h;
}

// Give every page of `h` up: empty ones to their segment (or the burst
// reserve), the rest to the abandoned lists, where other heaps adopt them.
// Under g_lock.
void heap_abandon_locked(Heap* h) {
  uint64_t now = os_now_ms();
  auto give_up = [&](Page* pg) {
    page_collect(pg);
    if (pg->is_head) {
      pg->is_head = 0;
      pg->used--;
    }
    pg->owner_fast.store(nullptr, std::memory_order_relaxed);
    if (pg->in_full) {
      pg->in_full = 0;
      pg->xthread_free.fetch_and(~kXFull, std::memory_order_seq_cst);
    }
    if (pg->used == 0) {
      give_back_locked(pg, now);
      return;
    }
    pg->heap.store(nullptr, std::memory_order_release);
    pg->next = g_abandoned[pg->cls];
    pg->prev = nullptr;
    g_abandoned[pg->cls] = pg;
  };
  for (unsigned c = 0; c < kNumClasses; c++) {
    Page* pg = h->queues[c].first;
    while (pg) {
      Page* next = pg->next;
      give_up(pg);
      pg = next;
    }
  }
  Page* pg = h->full;
  while (pg) {
    Page* next = pg->next;
    give_up(pg);
    pg = next;
  }
  // Large blocks stay valid and belong to no heap from now on.
  while (Page* pg = h->large) heap_large_unlink_locked(pg);
  ready_drop_locked(h, now);
  heap_reset(h);
  // live before the binding is released: a bind that races the delete
  // of the heap sees it dead once its CAS succeeds (heap_bind).
  __atomic_store_n(&h->live, 0, __ATOMIC_RELAXED);
  h->is_default = 0;
  h->bound_thread.store(0, std::memory_order_release);
  h->pool_next = g_heap_pool;
  g_heap_pool = h;
  stats_add(g_os_stats.heaps_abandoned, 1);
}

// A heap record from the pool, reset, or nullptr.
Heap* heap_make(bool is_default) {
  global_init();
  pthread_once(&g_key_once, make_key);
  Heap* h;
  {
    LockGuard g;
    h = heap_carve_locked();
    if (!h) return nullptr;
    heap_reset(h);  // under the lock: a sweep looks at every live heap
    __atomic_store_n(&h->live, 1, __ATOMIC_RELAXED);
  }
  h->is_default = is_default;
  stats_add(g_os_stats.heaps_created, 1);
  return h;
}

// Register the thread's exit hook (pthread_setspecific may call calloc,
// so only after t_heap is usable).
void ensure_key() {
  if (t_key_set) return;
  t_key_set = true;
  pthread_setspecific(g_heap_key, &g_empty_heap);
}

}  // namespace

void give_back_locked(Page* pg, uint64_t now) {
  if (!reserve_keep_locked(pg)) segment_page_free_locked(pg, now);
}

Heap* heap_get() {
  Heap* h = t_heap;
  return AM_LIKELY(h != &g_empty_heap) ? h : heap_default();
}

Heap* heap_default() {
  if (Heap* d = t_default) return d;
  Heap* h = heap_make(true);
  if (!h) return nullptr;
  t_default = h;
  if (t_heap == &g_empty_heap) t_heap = h;  // else a bound heap stays current
  ensure_key();
  return h;
}

Heap* heap_new() { return heap_make(false); }

Heap* heap_bind(Heap* h, bool* ok) {
  *ok = true;
  Heap* prev = t_heap;
  Heap* target = h ? h : (t_default ? t_default : &g_empty_heap);
  Heap* prev_user = (prev == &g_empty_heap || prev->is_default) ? nullptr : prev;
  if (target == prev) return prev_user;
  if (h) {
    // One thread at a time: claim the heap.
    uintptr_t me = static_cast<uintptr_t>(pthread_self());
    uintptr_t expect = 0;
    if (!h->bound_thread.compare_exchange_strong(expect, me, std::memory_order_acquire) &&
        expect != me) {
      *ok = false;
      return prev_user;
    }
    // Deleted between the caller's check and the claim: not bindable.
    if (!__atomic_load_n(&h->live, __ATOMIC_RELAXED)) {
      h->bound_thread.store(0, std::memory_order_release);
      *ok = false;
      return prev_user;
    }
  }
  if (prev_user) prev_user->bound_thread.store(0, std::memory_order_release);
  t_heap = target;
  ensure_key();
  return prev_user;
}

void heap_destroy(Heap* h) {
  LockGuard g;
  uint64_t now = os_now_ms();
  auto drop = [&](Page* pg) {
    while (pg) {
      Page* next = pg->next;
      segment_page_free_locked(pg, now);
      pg = next;
    }
  };
  for (unsigned c = 0; c < kNumClasses; c++) drop(h->queues[c].first);
  drop(h->full);
  ready_drop_locked(h, now);
  while (Page* pg = h->large) large_free_locked(pg, now);
  heap_reset(h);
}

void heap_delete(Heap* h) {
  if (t_heap == h) t_heap = t_default ? t_default : &g_empty_heap;
  LockGuard g;
  heap_abandon_locked(h);
}

void heap_large_link_locked(Heap* h, Page* pg) {
  pg->large_owner = h;
  pg->prev = nullptr;
  pg->next = h->large;
  if (h->large) h->large->prev = pg;
  h->large = pg;
}

void heap_large_unlink_locked(Page* pg) {
  Heap* h = pg->large_owner;
  if (!h) return;
  if (pg->prev)
    pg->prev->next = pg->next;
  else
    h->large = pg->next;
  if (pg->next) pg->next->prev = pg->prev;
  pg->next = pg->prev = nullptr;
  pg->large_owner = nullptr;
}

// Collect what other threads freed into any of our pages, and give back
// the pages that became empty, so that memory freed elsewhere is reused or
// purged even when it is not of the class being allocated.
static void collect_remote(Heap* h) {
  if (!h->remote_hint.load(std::memory_order_relaxed) &&
      !h->full_remote_hint.load(std::memory_order_relaxed))
    return;
  h->remote_hint.store(0, std::memory_order_seq_cst);
  unfull_remote(h);
  for (unsigned c = 0; c < kNumClasses; c++) {
    Page* pg = h->queues[c].first;
    while (pg) {
      Page* next = pg->next;
      if (page_collect_unwalked(pg) && page_is_empty(pg) && !pg->is_head) heap_page_empty(h, pg);
      pg = next;
    }
  }
}

void heap_idle_work(Heap* h, bool collect, bool tick) {
  if (tick) background_maybe_start();  // not under the heap lock: see below
  HeapLock lock(h);
  if (collect) collect_remote(h);
  if (tick) {
    maintenance_maybe();
    mesh_maybe(h);
    trim_maybe(h, kTrimUsIdle);
  }
}

static void* alloc_class_locked(Heap* h, unsigned cls) {
  for (;;) {
    while (Page* pg = h->queues[cls].first) {
      if (pg->free) return pop(pg);
      if (page_collect(pg) && pg->free) return pop(pg);
      if (Block* b = pg->trimmed ? page_untrim(pg) : page_carve(pg)) {
        pg->used++;
        return b;
      }
      page_to_full(h, pg);
      // A page ran out: the slow path also where a heap that reuses its
      // sparse pages (and so rarely needs a new one) trims the others.
      trim_maybe(h, kTrimUsSlowPath);
    }
    // Before taking a new page: collect what other threads freed into all
    // our pages, giving back pages that became empty (at most once a
    // millisecond: it looks at every page); else just take back full pages
    // that received frees.
    if (h->full_remote_hint.load(std::memory_order_relaxed) ||
        h->remote_hint.load(std::memory_order_relaxed)) {
      uint64_t now = os_now_ms();
      if (now != h->last_collect_ms) {
        h->last_collect_ms = now;
        collect_remote(h);
      } else if (h->full_remote_hint.load(std::memory_order_relaxed)) {
        unfull_remote(h);
      }
      if (h->queues[cls].first) continue;
    }
    maintenance_maybe();
    mesh_maybe(h);
    trim_maybe(h, kTrimUsSlowPath);
    if (!page_new(h, cls)) {
      errno = ENOMEM;
      return nullptr;
    }
  }
}

void* heap_alloc_class(Heap* h, unsigned cls) {
  // pthread_create allocates (calloc of the new thread's DTV), from this
  // heap: the worker starts before the heap lock is taken.
  background_maybe_start();
  HeapLock lock(h);
  return alloc_class_locked(h, cls);
}

Heap* heaps_first_locked() { return g_heaps; }

void heap_page_empty(Heap* h, Page* pg) {
  queue_remove(h, pg);
  retire(pg);
}

void page_emptied(Page* pg) {
  Heap* h = t_heap;
  HeapLock lock(h);
  heap_page_empty(h, pg);
}

// The worker's share of the engine: purge and sweep (see background.cpp).
uint64_t maintenance_tick(uint64_t now) {
  if (pthread_mutex_trylock(&g_lock) != 0) return now + 1;  // busy: soon again
  sweep_abandoned_locked(now);  // first: pages it empties are due after the delay
  bool owners = sweep_owners_locked(now);
  uint64_t next = segment_purge_locked(now, false);
  if (owners && now + kSweepMs < next) next = now + kSweepMs;
  // Abandoned pages still hold blocks that others will free: look again.
  for (unsigned c = 0; c < kNumClasses && next == kNeverMs; c++)
    if (g_abandoned[c]) next = now + g_options.purge_delay_ms + 1;
  pthread_mutex_unlock(&g_lock);
  return next;
}

void maintenance_maybe() {
  uint64_t now = os_now_ms();
  if (now - g_last_purge_ms.load(std::memory_order_relaxed) <
      (g_options.purge_delay_ms + 1) / 2 + 1)
    return;
  if (pthread_mutex_trylock(&g_lock) != 0) return;
  segment_purge_locked(now, false);
  sweep_abandoned_locked(now);
  sweep_owners_locked(now);
  pthread_mutex_unlock(&g_lock);
}

void heap_collect(Heap* h, bool force) {
  if (h != &g_empty_heap) {
    HeapLock lock(h);
    unfull_remote(h);
    for (unsigned c = 0; c < kNumClasses; c++) {
      Page* pg = h->queues[c].first;
      while (pg) {
        Page* next = pg->next;
        page_collect(pg);
        if (page_is_empty(pg) && (force || !pg->is_head)) heap_page_empty(h, pg);
        pg = next;
      }
    }
    if (g_options.mesh && h->is_default) mesh_heap(h, os_now_ms());
    if (g_options.trim) trim_heap(h, os_now_us(), ~uint32_t{0});
  }
  LockGuard g;
  uint64_t now = os_now_ms();
  sweep_abandoned_locked(now);
  if (force) reserve_drop_locked(now);
  segment_purge_locked(now, force);
}

void heap_thread_exit(void*) {
  // A bound heap is released (it survives the thread); the default heap
  // is given up.
  Heap* cur = t_heap;
  if (cur != &g_empty_heap && !cur->is_default)
    cur->bound_thread.store(0, std::memory_order_release);
  t_heap = &g_empty_heap;
  t_key_set = false;
  Heap* d = t_default;
  t_default = nullptr;
  if (!d) return;
  LockGuard g;
  heap_abandon_locked(d);
}

void heap_fork_prepare() {
  Heap* done = nullptr;  // the heaps from here down the list are locked
  for (;;) {
    pthread_mutex_lock(&g_lock);
    Heap* head = g_heaps;
    pthread_mutex_unlock(&g_lock);
    for (Heap* h = head; h != done; h = h->next) heap_lock(h);
    done = head;
    pthread_mutex_lock(&g_lock);
    if (g_heaps == head) return;  // no heap was made meanwhile
    pthread_mutex_unlock(&g_lock);
  }
}

void heap_fork_parent() {
  for (Heap* h = g_heaps; h; h = h->next) heap_unlock(h);
  pthread_mutex_unlock(&g_lock);
}

void heap_fork_child() {
  // Only the forking thread lives on: the other threads' default heaps are
  // orphaned, and heaps they had bound become free to bind. The heap locks
  // that fork_prepare took are released.
  LockGuard g;
  for (Heap* h = g_heaps; h; h = h->next) {
    h->lock.store(0, std::memory_order_relaxed);
    h->debug_user.store(0, std::memory_order_relaxed);  // (debug builds)
    if (!h->live) continue;
    if (h->is_default && h != t_default)
      heap_abandon_locked(h);
    else if (!h->is_default && h != t_heap)
      h->bound_thread.store(0, std::memory_order_relaxed);
  }
}

AM_APPROXIMATE_READS void heap_stats_sum(uint64_t* remote_frees, uint64_t* pages_adopted) {
  uint64_t r = 0, a = 0;
  for (Heap* h = g_heaps; h; h = h->next) {
    r += h->remote_frees;
    a += h->pages_adopted;
  }
  *remote_frees = r;
  *pages_adopted = a;
}

}  // namespace am
