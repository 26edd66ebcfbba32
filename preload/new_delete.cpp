// Every global operator new and delete, on amalloc. new calls the
// new-handler and then throws std::bad_alloc, as the standard asks.
#include <new>

#include "allocator/alloc_inline.h"
#include "allocator/api.h"

using namespace am;

namespace {

// The throwing path lives apart from the fast path so that the fast path
// stays a tail call.
__attribute__((noinline)) void* new_retry(size_t size, size_t align, bool nothrow) {
  for (;;) {
    void* p = align <= 16 ? malloc_fast(size) : alloc_aligned(nullptr, align, size);
    if (p) return p;
    std::new_handler handler = std::get_new_handler();
    if (!handler) {
      if (nothrow) return nullptr;
      throw std::bad_alloc();
    }
    handler();
  }
}

AM_INLINE void* new_impl(size_t size) {
  void* p = malloc_fast(size);
  if (AM_LIKELY(p != nullptr)) return p;
  return new_retry(size, 0, false);
}

AM_INLINE void* new_aligned(size_t size, std::align_val_t al, bool nothrow) {
  void* p = alloc_aligned(nullptr, static_cast<size_t>(al), size);
  if (AM_LIKELY(p != nullptr)) return p;
  return new_retry(size, static_cast<size_t>(al), nothrow);
}

AM_INLINE void* new_nothrow(size_t size) noexcept {
  void* p = malloc_fast(size);
  if (AM_LIKELY(p != nullptr)) return p;
  try {
    return new_retry(size, 0, true);
  } catch (...) {
    return nullptr;
  }
}

}  // namespace

#define AM_EXPORT __attribute__((visibility("default")))

AM_EXPORT void* operator new(size_t n) { return new_impl(n); }
AM_EXPORT void* operator new[](size_t n) { return new_impl(n); }
AM_EXPORT void* operator new(size_t n, const std::nothrow_t&) noexcept { return new_nothrow(n); }
AM_EXPORT void* operator new[](size_t n, const std::nothrow_t&) noexcept { return new_nothrow(n); }
AM_EXPORT void* operator new(size_t n, std::align_val_t al) { return new_aligned(n, al, false); }
AM_EXPORT void* operator new[](size_t n, std::align_val_t al) { return new_aligned(n, al, false); }
AM_EXPORT void* operator new(size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return new_aligned(n, al, true);
  } catch (...) {
    return nullptr;
  }
}
AM_EXPORT void* operator new[](size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
  try {
    return new_aligned(n, al, true);
  } catch (...) {
    return nullptr;
  }
}

AM_EXPORT void operator delete(void* p) noexcept { free_fast(p); }
AM_EXPORT void operator delete[](void* p) noexcept { free_fast(p); }
AM_EXPORT void operator delete(void* p, const std::nothrow_t&) noexcept { free_fast(p); }
AM_EXPORT void operator delete[](void* p, const std::nothrow_t&) noexcept { free_fast(p); }
AM_EXPORT void operator delete(void* p, size_t) noexcept { free_fast(p); }
AM_EXPORT void operator delete[](void* p, size_t) noexcept { free_fast(p); }
AM_EXPORT void operator delete(void* p, std::align_val_t) noexcept { free_fast(p); }
AM_EXPORT void operator delete[](void* p, std::align_val_t) noexcept { free_fast(p); }
AM_EXPORT void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  free_fast(p);
}
AM_EXPORT void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  free_fast(p);
}
AM_EXPORT void operator delete(void* p, size_t, std::align_val_t) noexcept { free_fast(p); }
AM_EXPORT void operator delete[](void* p, size_t, std::align_val_t) noexcept { free_fast(p); }
