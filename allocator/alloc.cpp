// The malloc family on top of the fast paths: slow malloc, aligned,
// zeroed and resized allocation, usable size; the am_* C API.
#include <errno.h>

#include <cstring>

#include "allocator/alloc_inline.h"
#include "allocator/api.h"
#include "allocator/large.h"
#include "allocator/predict.h"
#include "allocator/stats.h"
#include "amalloc/amalloc.h"

namespace am {

bool check_block(const char* fn, const void* p, const Page* pg);
void bad_pointer(const char* fn, const void* p);

namespace {

AM_COLD void* fail(int err) {
  errno = err;
  return nullptr;
}

bool is_pow2(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

// The live page of block `p`, or nullptr after reporting a bad pointer.
Page* page_checked(const char* fn, const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  Page* pg = page_lookup(a);
  if (!pg) {
    bad_pointer(fn, p);
    return nullptr;
  }
  if (pg->in_use && pg->kind == kKindLarge) {
    if (p == pg->start) return pg;
  }
  return check_block(fn, p, pg) ? pg : nullptr;
}

}  // namespace

AM_NOINLINE void* malloc_slow(size_t size) {
  Heap* h = heap_get();
  if (AM_UNLIKELY(h == nullptr)) return fail(ENOMEM);
  return heap_malloc_slow(h, size);
}

AM_NOINLINE void* heap_malloc_slow(Heap* h, size_t size) {
  if (size <= kDirectMax) {
    if (void* p = direct_pop(h, size)) return p;
    return heap_alloc_class(h, kDirectClass[(size + 15) >> 4]);
  }
  if (size <= kMediumMax) {
    unsigned cls = size_to_class(size);
    Page* pg = h->queues[cls].first;
    if (AM_LIKELY(pg && pg->free)) {
      Block* b = pg->free;
      pg->free = b->next;
      pg->used++;
      return b;
    }
    return heap_alloc_class(h, cls);
  }
  if (size > kMaxRequest) return fail(ENOMEM);
  return large_alloc(h, size, 0, false);
}

void* alloc_aligned(Heap* h, size_t align, size_t size) {
  if (!is_pow2(align)) return fail(EINVAL);
  if (align <= 16) return alloc_from(h, size);
  if (size > kMaxRequest || align > kMaxRequest) return fail(ENOMEM);
  // Small and medium pages start at multiples of their (power of two)
  // size, so a block is `align`-aligned when its class size is a multiple
  // of `align`; power-of-two classes guarantee one exists.
  if (align <= kMediumMax && size <= kMediumMax) {
    size_t need = size < align ? align : size;
    for (unsigned c = size_to_class(need); c < kNumClasses; c++)
      if (kClassSize[c] % align == 0) return alloc_from(h, kClassSize[c]);
  }
  if (!h && !(h = heap_get())) return fail(ENOMEM);
  return large_alloc(h, size == 0 ? 1 : size, align, false);
}

void* alloc_calloc(Heap* h, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total) || total > kMaxRequest) return fail(ENOMEM);
  if (total > kMediumMax) {
    if (!h && !(h = heap_get())) return fail(ENOMEM);
    return large_alloc(h, total, 0, true);
  }
  void* p = alloc_from(h, total);
  if (p) memset(p, 0, total);
  return p;
}

void* alloc_realloc(Heap* h, void* p, size_t size) {
  if (p == nullptr) return alloc_from(h, size);
  if (size == 0) {
    free_fast(p);
    return nullptr;
  }
  if (size > kMaxRequest) return fail(ENOMEM);
  Page* pg = page_checked("realloc", p);
  if (!pg) return nullptr;
  size_t old = pg->block_size;
  if (pg->kind == kKindLarge) {
    if (size > kMediumMax) {
      if (void* r = large_resize(pg, size)) return r;
    }
  } else if (size <= old && size > old / 2) {
    return p;  // fits, and not much smaller
  }
  // A block grown a little past its class is likely to grow again (a
  // buffer realloc'ed to each new length, as C code appends): it moves
  // into room for 1/8 more, so that the next small steps stay in place.
  size_t want = size;
  if (size > old && size - old < old / 4 && size <= kMediumMax) {
    want = size + size / 8;
    if (want > kMediumMax) want = kMediumMax;
  }
  const int saved_errno = errno;
  void* q = alloc_from(h, want);
  if (!q && want != size) {  // the room was a bonus
    errno = saved_errno;
    q = alloc_from(h, size);
  }
  if (!q) return nullptr;
  memcpy(q, p, size < old ? size : old);
  free_fast(p);
  return q;
}

size_t alloc_usable_size(const void* p) {
  if (p == nullptr) return 0;
  Page* pg = page_checked("malloc_usable_size", p);
  return pg ? pg->block_size : 0;
}

AM_APPROXIMATE_READS size_t alloc_block_bytes(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  Page* pg = p ? page_lookup(a) : nullptr;
  if (!pg || !pg->in_use || pg->block_size == 0) return 0;
  if (pg->kind == kKindLarge) return p == pg->start ? pg->block_size : 0;
  return block_check(pg, a) == kBlockOk ? pg->block_size : 0;
}

int alloc_posix_memalign(void** out, size_t align, size_t size) {
  if (!is_pow2(align) || align % sizeof(void*) != 0) return EINVAL;
  int saved = errno;
  void* p = alloc_aligned(nullptr, align, size);
  if (!p) {
    int err = errno;
    errno = saved;
    return err == 0 ? ENOMEM : err;
  }
  *out = p;
  return 0;
}

void* alloc_pvalloc(size_t size) {
  size_t rounded = (size + kOsPage - 1) & ~(kOsPage - 1);
  if (rounded < size) return fail(ENOMEM);
  return alloc_aligned(nullptr, kOsPage, rounded == 0 ? kOsPage : rounded);
}

void* alloc_reallocarray(void* p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) return fail(ENOMEM);
  return alloc_realloc(nullptr, p, total);
}

}  // namespace am

using namespace am;

extern "C" {

void* am_malloc(size_t size) { return malloc_fast(size); }
void am_free(void* p) { free_fast(p); }
void am_free_sized(void* p, size_t) { free_fast(p); }
void* am_calloc(size_t count, size_t size) { return alloc_calloc(nullptr, count, size); }
void* am_realloc(void* p, size_t size) { return alloc_realloc(nullptr, p, size); }
void* am_reallocarray(void* p, size_t count, size_t size) {
  return alloc_reallocarray(p, count, size);
}
void* am_memalign(size_t align, size_t size) {
  return alloc_aligned(nullptr, align == 0 ? 1 : align, size);
}
void* am_aligned_alloc(size_t align, size_t size) {
  return alloc_aligned(nullptr, align == 0 ? 1 : align, size);
}
int am_posix_memalign(void** out, size_t align, size_t size) {
  return alloc_posix_memalign(out, align, size);
}
void* am_valloc(size_t size) { return alloc_aligned(nullptr, kOsPage, size); }
void* am_pvalloc(size_t size) { return alloc_pvalloc(size); }
size_t am_usable_size(const void* p) { return alloc_usable_size(p); }
const char* am_version(void) { return AMALLOC_VERSION_STRING; }

int am_owns(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return segmap_code(a) != 0 ? 1 : 0;
}

void am_collect(int force) { heap_collect(t_heap, force != 0); }

// A block is worth moving when its page is less than half full and is not
// the page its owner allocates from (which is where the copy would land).
AM_APPROXIMATE_READS int am_defrag_hint(const void* p) {
  if (!p || !segmap_fast(reinterpret_cast<uintptr_t>(p))) return 0;
  Page* pg = page_checked("am_defrag_hint", p);
  if (!pg || pg->kind == kKindLarge || pg->is_head) return 0;
  if (pg->meshed) return 1;  // moving its blocks out lets the group go
  uint32_t live = pg->used;
  return live * 2 < pg->reserved ? 1 : 0;
}

void* am_defrag_move(void* p, size_t size) {
  if (!am_defrag_hint(p)) return p;
  void* q = am_malloc(size);
  if (!q) return p;  // stays where it is
  memcpy(q, p, size);
  am_free(p);
  stats_add(g_os_stats.defrag_moves, 1);
  return q;
}

size_t am_prefill(size_t size, size_t count) {
  if (size == 0 || count == 0) return 0;
  if (size <= kMediumMax) {
    Heap* h = t_heap;
    if (h == &g_empty_heap && !(h = heap_get())) return 0;
    unsigned cls = size_to_class(size);
    size_t area = class_is_small(cls) ? kSlotSize : kSlotSize * kMediumSpan;
    size_t per_page = area / kClassSize[cls];
    size_t made = prefill(h, cls, (count + per_page - 1) / per_page) * per_page;
    return made < count ? made : count;
  }
  // Large blocks: map and fault them in, then free them (they stay
  // resident as free span slots or cached segments, up to those bounds),
  // chained through their first words.
  void* chain = nullptr;
  size_t made = 0;
  for (; made < count; made++) {
    auto* p = static_cast<uint8_t*>(am_malloc(size));
    if (!p) break;
    for (size_t off = 0; off < size; off += kOsPage) static_cast<volatile uint8_t*>(p)[off] = 0;
    *reinterpret_cast<void**>(p) = chain;
    chain = p;
  }
  while (chain) {
    void* next = *static_cast<void**>(chain);
    am_free(chain);
    chain = next;
  }
  return made;
}

}  // extern "C"
