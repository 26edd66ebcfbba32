// The am_heap_* C API and the executor idle point.
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "allocator/alloc_inline.h"
#include "allocator/api.h"
#include "allocator/format.h"
#include "allocator/stats.h"
#include "amalloc/amalloc.h"

using namespace am;

struct am_heap_s : Heap {};

namespace {

Heap* to_heap(am_heap_t* h) { return static_cast<Heap*>(h); }
am_heap_t* to_api(Heap* h) { return static_cast<am_heap_t*>(h); }

void report(const char* fn, const void* heap, const char* what) {
  stats_add(g_os_stats.bad_frees, 1);
  Out o;
  o.str("amalloc: ")
      .str(fn)
      .str("(): heap ")
      .hex(reinterpret_cast<uintptr_t>(heap))
      .ch(' ')
      .str(what)
      .ch('\n')
      .flush(2);
}

// A heap handed to the API must be one from am_heap_new that is live.
bool usable(const char* fn, Heap* h) {
  if (h == nullptr) {
    report(fn, h, "is NULL");
    return false;
  }
  if (!h->live || h->is_default) {
    report(fn, h, "is not a live heap made by am_heap_new");
    return false;
  }
  return true;
}

// A heap is used by one thread at a time: debug builds check that a heap
// another thread has bound is not allocated from here (and abort, since the
// heap's pages would be corrupted).
Heap* checked(am_heap_t* heap) {
  Heap* h = to_heap(heap);
#ifndef NDEBUG
  uintptr_t bound = h->bound_thread.load(std::memory_order_relaxed);
  if (bound != 0 && bound != static_cast<uintptr_t>(pthread_self())) {
    report("am_heap_malloc", h, "is bound on another thread");
    abort();
  }
#endif
  return h;
}

}  // namespace

extern "C" {

am_heap_t* am_heap_new(void) {
  Heap* h = heap_new();
  if (!h) errno = ENOMEM;
  return to_api(h);
}

am_heap_t* am_heap_bind(am_heap_t* heap) {
  Heap* h = to_heap(heap);
  if (h && !usable("am_heap_bind", h)) {
    errno = EINVAL;
    return heap;
  }
  bool ok;
  Heap* prev = heap_bind(h, &ok);
  if (!ok) {
    report("am_heap_bind", h, "is bound on another thread");
    errno = EBUSY;
    return heap;
  }
  return to_api(prev);
}

void* am_heap_malloc(am_heap_t* heap, size_t size) { return heap_malloc(checked(heap), size); }
void* am_heap_calloc(am_heap_t* heap, size_t count, size_t size) {
  return alloc_calloc(checked(heap), count, size);
}
void* am_heap_realloc(am_heap_t* heap, void* p, size_t size) {
  return alloc_realloc(checked(heap), p, size);
}
void* am_heap_memalign(am_heap_t* heap, size_t align, size_t size) {
  return alloc_aligned(checked(heap), align == 0 ? 1 : align, size);
}

void am_heap_destroy(am_heap_t* heap) {
  if (usable("am_heap_destroy", to_heap(heap))) heap_destroy(to_heap(heap));
}

void am_heap_delete(am_heap_t* heap) {
  if (usable("am_heap_delete", to_heap(heap))) heap_delete(to_heap(heap));
}

}  // extern "C"
