// The C ABI that replaces glibc's malloc: the standard names, the glibc
// extras, and the __libc_* aliases that glibc-internal callers use.
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>

#include "allocator/alloc_inline.h"
#include "allocator/api.h"
#include "allocator/heap.h"
#include "allocator/lock.h"
#include "allocator/os.h"
#include "allocator/segment.h"

using namespace am;

#define AM_EXPORT extern "C" __attribute__((visibility("default")))

AM_EXPORT void* malloc(size_t size) noexcept { return malloc_fast(size); }
AM_EXPORT void free(void* p) noexcept { free_fast(p); }
AM_EXPORT void* calloc(size_t n, size_t size) noexcept { return alloc_calloc(nullptr, n, size); }
AM_EXPORT void* realloc(void* p, size_t size) noexcept { return alloc_realloc(nullptr, p, size); }
AM_EXPORT void* reallocarray(void* p, size_t n, size_t size) noexcept {
  return alloc_reallocarray(p, n, size);
}
AM_EXPORT void* memalign(size_t align, size_t size) noexcept {
  return alloc_aligned(nullptr, align == 0 ? 1 : align, size);
}
AM_EXPORT void* aligned_alloc(size_t align, size_t size) noexcept {
  return alloc_aligned(nullptr, align == 0 ? 1 : align, size);
}
AM_EXPORT int posix_memalign(void** out, size_t align, size_t size) noexcept {
  return alloc_posix_memalign(out, align, size);
}
AM_EXPORT void* valloc(size_t size) noexcept { return alloc_aligned(nullptr, kOsPage, size); }
AM_EXPORT void* pvalloc(size_t size) noexcept { return alloc_pvalloc(size); }
AM_EXPORT size_t malloc_usable_size(void* p) noexcept { return alloc_usable_size(p); }

// glibc's internal names (used by some glibc programs and libraries): the
// same functions under a second name.
#if defined(__clang__)
#define AM_ALIAS(name, target) \
  extern "C" __attribute__((visibility("default"), alias(#target))) decltype(target) name
#else
#define AM_ALIAS(name, target) \
  extern "C"                   \
      __attribute__((visibility("default"), alias(#target), copy(target))) decltype(target) name
#endif
AM_ALIAS(__libc_malloc, malloc);
AM_ALIAS(__libc_free, free);
AM_ALIAS(__libc_calloc, calloc);
AM_ALIAS(__libc_realloc, realloc);
AM_ALIAS(__libc_memalign, memalign);
AM_ALIAS(__libc_valloc, valloc);
AM_ALIAS(__libc_pvalloc, pvalloc);
AM_ALIAS(__posix_memalign, posix_memalign);
AM_ALIAS(cfree, free);

// glibc extras that programs call: trim means purge now; the rest are
// accepted and do nothing, as glibc's own do for unknown parameters.
AM_EXPORT int malloc_trim(size_t) noexcept {
  heap_collect(t_heap, true);
  return 1;
}
AM_EXPORT int mallopt(int, int) noexcept { return 1; }
