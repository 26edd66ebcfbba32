// Heaps: one per thread (created lazily), their page queues, the slow
// allocation path, thread exit (abandoning pages) and adoption.
#pragma once
#include "allocator/os.h"
#include "allocator/types.h"

namespace am {

// A page with no blocks: the direct table of a heap points here for classes
// that have no page yet, so the fast path needs no NULL check.
extern Page g_empty_page;
// The heap of threads that have not allocated yet (never owns a page).
extern Heap g_empty_heap;
// The calling thread's current heap (its default heap, or the heap it has
// bound), and its default heap (nullptr until first needed).
extern __thread Heap* t_heap __attribute__((tls_model("initial-exec")));
extern __thread Heap* t_default __attribute__((tls_model("initial-exec")));

// The calling thread's heap, creating it on first use; nullptr if the OS
// refuses memory for it.
Heap* heap_get();
// The calling thread's default heap, even while it has another bound,
// creating it on first use; nullptr if the OS refuses memory for it.
Heap* heap_default();
// Allocate a block of class `cls` (the slow path behind the direct table;
// takes the heap lock).
void* heap_alloc_class(Heap* h, unsigned cls);
// The owner freed the last block of a page that is not its queue's head.
void heap_page_empty(Heap* h, Page* pg);
// The same, from the free fast path (which does not load the heap).
void page_emptied(Page* pg);
// The owner freed a block into one of its full pages (heap lock held).
void heap_page_unfull(Heap* h, Page* pg);
// Heap::lock, taken by the owner around every slow path that touches its
// queues or pages: a sweep (sweep.cpp) may then work on them. The owner
// may wait for a sweep (which holds it for a bounded number of pages); a
// sweep never waits for the owner (heap_trylock).
inline void heap_lock(Heap* h) {
  unsigned spins = 0;
  while (h->lock.exchange(1, std::memory_order_acquire))
    while (h->lock.load(std::memory_order_relaxed))
      if (++spins < 256)
        AM_CPU_RELAX();
      else
        os_yield();  // the sweeping thread may have lost its CPU
  h->locks++;
}
inline bool heap_trylock(Heap* h) { return !h->lock.exchange(1, std::memory_order_acquire); }
inline void heap_unlock(Heap* h) { h->lock.store(0, std::memory_order_release); }
struct HeapLock {
  explicit HeapLock(Heap* heap) : h(heap) { heap_lock(h); }
  ~HeapLock() { heap_unlock(h); }
  HeapLock(const HeapLock&) = delete;
  HeapLock& operator=(const HeapLock&) = delete;
  Heap* h;
};
// Collect remote frees, retire empty pages, and purge what is due.
void heap_collect(Heap* h, bool force);
// A page with no live block leaves its heap: into the burst reserve when
// the predictor keeps one (predict.h), else back to its segment. Under
// g_lock.
void give_back_locked(Page* pg, uint64_t now);
// The worker's sweeps of owners that stopped collecting remote frees
// (sweep.cpp). Under g_lock; returns whether to look again in kSweepMs.
constexpr uint64_t kSweepMs = 10;
bool sweep_owners_locked(uint64_t now);
// Purge and sweep abandoned pages if the purge delay has passed (the
// caller starts the worker first: background_maybe_start).
void maintenance_maybe();
// Every heap ever made, linked by `next` (for the worker). Under g_lock.
Heap* heaps_first_locked();
// Purge what is due and sweep abandoned pages; returns when more falls due.
uint64_t maintenance_tick(uint64_t now);

// Heaps made by the application (am_heap_*). See amalloc.h for the rules.
Heap* heap_new();
// Makes `h` (nullptr: the thread's default heap) the calling thread's
// current heap and returns the previous one (nullptr for the default).
// *ok is false, and nothing changes, when another thread has `h` bound.
Heap* heap_bind(Heap* h, bool* ok);
void heap_destroy(Heap* h);
void heap_delete(Heap* h);
// Large blocks belong to a heap too, so that heap_destroy frees them.
void heap_large_link_locked(Heap* h, Page* pg);
void heap_large_unlink_locked(Page* pg);
// The executor idle point's part (pools/executor.cpp): collect remote
// frees, and on a tick purge what is due.
void heap_idle_work(Heap* h, bool collect, bool tick);
inline bool heap_remote_waiting(const Heap* h) {
  return h->remote_hint.load(std::memory_order_relaxed) |
         h->full_remote_hint.load(std::memory_order_relaxed);
}

// Thread exit (pthread key destructor) and fork.
void heap_thread_exit(void* heap);
// fork(): no owner is inside a slow path across it, so a child that adopts
// the other threads' heaps finds them whole. Prepare takes every heap lock
// and then g_lock (a heap made meanwhile sends it round again); the
// parent's handler releases them all.
void heap_fork_prepare();
void heap_fork_parent();
void heap_fork_child();
void heap_stats_sum(uint64_t* remote_frees, uint64_t* pages_adopted);

}  // namespace am
