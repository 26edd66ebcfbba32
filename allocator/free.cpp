// The slow side of free: frees from other threads, into full pages, of
// large blocks, and the report of bad frees.
#include <stdlib.h>

#include "allocator/alloc_inline.h"
#include "allocator/background.h"
#include "allocator/format.h"
#include "allocator/large.h"
#include "allocator/mesh.h"
#include "allocator/options.h"
#include "allocator/stats.h"

namespace am {

namespace {

AM_COLD void report(const char* fn, const void* p, const char* what, const void* block = nullptr) {
  stats_add(g_os_stats.bad_frees, 1);
  Out o;
  o.str("amalloc: ").str(fn).str("(): ").str(what).ch(' ').hex(reinterpret_cast<uintptr_t>(p));
  if (block) o.str(" (inside the block at ").hex(reinterpret_cast<uintptr_t>(block)).ch(')');
  o.str(g_options.bad_free == kBadFreeAbort ? "; aborting\n" : "; ignored\n");
  o.flush(2);
  if (g_options.bad_free == kBadFreeAbort) abort();
}

}  // namespace

// Checks that `a` is a live block start of `pg` as far as can be told
// without walking lists; reports and returns false if not.
bool check_block(const char* fn, const void* p, const Page* pg) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  switch (block_check(pg, a)) {
    case kBlockOk:
      return true;
    case kPageNotInUse:
      report(fn, p, "invalid pointer (not allocated by amalloc, or already freed):");
      return false;
    case kOutsidePage:
      report(fn, p, "invalid pointer (not allocated by amalloc):");
      return false;
    case kInsideBlock:
      break;
  }
  uintptr_t start = reinterpret_cast<uintptr_t>(pg->start);
  uintptr_t block = start + (a - start) / pg->block_size * pg->block_size;
  report(fn, p, "invalid pointer (not the start of a block):", reinterpret_cast<void*>(block));
  return false;
}

void bad_pointer(const char* fn, const void* p) {
  report(fn, p, "invalid pointer (not allocated by amalloc, or already freed):");
}

AM_COLD void free_not_ours(void* p) {
  if (p == nullptr) return;
  // Huge blocks aligned to 4 MiB or more start in a kMapTail slot.
  if (Page* pg = page_lookup(reinterpret_cast<uintptr_t>(p))) return free_slow(p, pg);
  bad_pointer("free", p);
}

AM_COLD void free_bad_block(void* p, Page* pg) {
  if (p == pg->free) {
    report("free", p, "double free of");
    return;
  }
  check_block("free", p, pg);
}

AM_NOINLINE void free_slow(void* p, Page* slot) {
  Page* pg = page_resolve(slot);
  Heap* h = t_heap;
  Heap* owner = pg->heap.load(std::memory_order_relaxed);
  if (owner == h && h != &g_empty_heap) {
    // Our own page, off the fast path because it is full, or the block
    // lies past the page's first slot (medium pages).
    if (!check_block("free", p, pg)) return;
    // Only the owner changes in_full of a page it holds a block of.
    if (!pg->in_full) {
      if (p == pg->free) return report("free", p, "double free of");
      if (owner_push(pg, static_cast<Block*>(p), pg->free)) page_emptied(pg);
      return;
    }
    bool twice;
    {
      HeapLock lock(h);  // a full page's blocks are shared with a sweep
      twice = p == pg->free;
      if (!twice) {
        bool empty = owner_push(pg, static_cast<Block*>(p), pg->free);
        heap_page_unfull(h, pg);
        if (empty) heap_page_empty(h, pg);
      }
    }
    // Reported without the lock: abort() runs SIGABRT handlers, which may
    // allocate.
    if (twice) report("free", p, "double free of");
    return;
  }
  if (pg->in_use && pg->kind == kKindLarge) {
    if (p != pg->start) return (void)check_block("free", p, pg);
    // Checked again under the lock: two threads may free it at once.
    if (!large_free(pg)) bad_pointer("free", p);
    return;
  }
  if (!check_block("free", p, pg)) return;
  // Another thread's page (or an abandoned one): push without a lock.
  // Everything read of the page comes before the push: once the block is
  // on the list, the owner may collect it, empty the page and unmap it.
  // Heaps are never unmapped, so the hints below are safe (at worst one
  // lands on a heap that no longer owns the page, and costs it a look).
  // The owner is read after the value the CAS replaces: a page adopted
  // and filled meanwhile set kXFull after its new owner was published.
  // A meshed page's blocks are never linked (see mesh.h); a link written
  // before the page became meshed lands in this block's own slot, which
  // no other page's live block shares.
  Block* b = static_cast<Block*>(p);
  uintptr_t old = pg->xthread_free.load(std::memory_order_acquire);
  Heap* o;
  do {
    if (old & kXMesh) return mesh_free(pg, p);
    o = pg->heap.load(std::memory_order_acquire);
    b->next = xlist(old);
  } while (!pg->xthread_free.compare_exchange_weak(
      old,
      reinterpret_cast<uintptr_t>(b) | ((old & ~(kXCountOne - 1)) + kXCountOne) | (old & kXFull),
      std::memory_order_seq_cst, std::memory_order_acquire));
  if (h != &g_empty_heap)
    h->remote_frees++;
  else
    stats_add(g_os_stats.remote_frees, 1);  // a thread that never allocated
  // Tell the owner if the page sits on its full list (see page_to_full),
  // and that there is something to collect at its idle point.
  if (o) {
    // The first such free wakes the worker, which collects them if the
    // owner does not (an owner that stopped allocating).
    if ((old & kXFull) && !o->full_remote_hint.load(std::memory_order_seq_cst)) {
      o->full_remote_hint.store(1, std::memory_order_seq_cst);
      background_kick();
    }
    // 2: a sweep looked at the pages since the owner last collected; this
    // free may have emptied one, so it wakes the worker too.
    if (uint8_t hint = o->remote_hint.load(std::memory_order_seq_cst); hint != 1) {
      o->remote_hint.store(1, std::memory_order_seq_cst);
      background_kick();
    }
  }
}

}  // namespace am
