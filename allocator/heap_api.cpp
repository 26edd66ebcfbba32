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
  if (!__atomic_load_n(&h->live, __ATOMIC_RELAXED) || h->is_default) {
    report(fn, h, "is not a live heap made by am_heap_new");
    return false;
  }
  return true;
}

uintptr_t self() { return static_cast<uintptr_t>(pthread_self()); }

// Destroy and delete hold the heap's binding for their length: a heap
// that another thread has bound (or binds meanwhile) would lose its pages
// under that thread. Reported and refused (errno EBUSY). *taken: the
// binding was taken here (else this thread had the heap bound already).
bool claim(const char* fn, Heap* h, bool* taken) {
  uintptr_t me = self(), expect = 0;
  *taken = h->bound_thread.compare_exchange_strong(expect, me, std::memory_order_acquire);
  if (*taken || expect == me) return true;
  report(fn, h, "is bound on another thread; ignored");
  errno = EBUSY;
  return false;
}

// A heap is used by one thread at a time. Debug builds (no NDEBUG) check
// it on every am_heap_* call: the call claims the heap for its length, and
// aborts, naming the function, if the heap is bound on another thread or
// another thread is inside a call on it (its pages would be corrupted).
class Use {
 public:
  Use(const char* fn, am_heap_t* heap) : h_(to_heap(heap)) {
#ifndef NDEBUG
    uintptr_t me = self(), b = h_->bound_thread.load(std::memory_order_relaxed);
    if (b != 0 && b != me) die(fn, "is bound on another thread");
    uintptr_t expect = 0;
    if (h_->debug_user.compare_exchange_strong(expect, me, std::memory_order_acquire))
      claimed_ = true;
    else if (expect != me)
      die(fn, "is in use on another thread at the same time");
#else
    (void)fn;
#endif
  }
  ~Use() {
    if (claimed_) h_->debug_user.store(0, std::memory_order_release);
  }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;
  Heap* heap() const { return h_; }

 private:
  [[noreturn]] AM_COLD void die(const char* fn, const char* what) {
    report(fn, h_, what);
    abort();
  }
  Heap* h_;
  bool claimed_ = false;
};

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
  // The debug check (claimed and released), once the binding is ours: a
  // bind racing a destroy, which holds the binding, is refused, not aborted.
  if (h) {
    Use u("am_heap_bind", heap);
  }
  return to_api(prev);
}

void* am_heap_malloc(am_heap_t* heap, size_t size) {
  Use u("am_heap_malloc", heap);
  return heap_malloc(u.heap(), size);
}
void* am_heap_calloc(am_heap_t* heap, size_t count, size_t size) {
  Use u("am_heap_calloc", heap);
  return alloc_calloc(u.heap(), count, size);
}
void* am_heap_realloc(am_heap_t* heap, void* p, size_t size) {
  Use u("am_heap_realloc", heap);
  return alloc_realloc(u.heap(), p, size);
}
void* am_heap_memalign(am_heap_t* heap, size_t align, size_t size) {
  Use u("am_heap_memalign", heap);
  return alloc_aligned(u.heap(), align == 0 ? 1 : align, size);
}

void am_heap_destroy(am_heap_t* heap) {
  Heap* h = to_heap(heap);
  bool taken;
  if (!usable("am_heap_destroy", h) || !claim("am_heap_destroy", h, &taken)) return;
  {
    Use u("am_heap_destroy", heap);
    heap_destroy(h);
  }
  if (taken) h->bound_thread.store(0, std::memory_order_release);
}

void am_heap_delete(am_heap_t* heap) {
  Heap* h = to_heap(heap);
  bool taken;
  if (!usable("am_heap_delete", h) || !claim("am_heap_delete", h, &taken)) return;
  {
    Use u("am_heap_delete", heap);  // released before the record goes back to the pool
  }
  heap_delete(h);  // clears the binding
}

}  // extern "C"
