// Heaps: one per thread (created lazily), their page queues, the slow
// allocation path, thread exit (abandoning pages) and adoption.
#pragma once
#include "allocator/types.h"

namespace am {

// A page with no blocks: the direct table of a heap points here for classes
// that have no page yet, so the fast path needs no NULL check.
extern Page g_empty_page;
// The heap of threads that have not allocated yet (never owns a page).
extern Heap g_empty_heap;
extern __thread Heap* t_heap __attribute__((tls_model("initial-exec")));

// The calling thread's heap, creating it on first use; nullptr if the OS
// refuses memory for it.
Heap* heap_get();
// Allocate a block of class `cls` (the slow path behind the direct table).
void* heap_alloc_class(Heap* h, unsigned cls);
// The owner freed the last block of a page that is not its queue's head.
void heap_page_empty(Heap* h, Page* pg);
// The same, from the free fast path (which does not load the heap).
void page_emptied(Page* pg);
// The owner freed a block into one of its full pages.
void heap_page_unfull(Heap* h, Page* pg);
// Collect remote frees, retire empty pages, and purge what is due.
void heap_collect(Heap* h, bool force);
// Purge and sweep abandoned pages if the purge delay has passed.
void maintenance_maybe();

// Thread exit (pthread key destructor) and fork.
void heap_thread_exit(void* heap);
void heap_fork_child();
void heap_stats_sum(uint64_t* remote_frees, uint64_t* pages_adopted);

}  // namespace am
