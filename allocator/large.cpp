#include "allocator/large.h"

#include <errno.h>

#include <cstring>

#include "allocator/heap.h"
#include "allocator/lock.h"
#include "allocator/os.h"
#include "allocator/page.h"
#include "allocator/segment.h"
#include "allocator/stats.h"
#include "allocator/trim.h"

namespace am {

namespace {

size_t round_page(size_t n) { return (n + kOsPage - 1) & ~(kOsPage - 1); }

// Only offset 0 passes the block check of a large page.
constexpr uint64_t kLargeDivc = divisibility_magic(uint64_t{1} << 32);

}  // namespace

void* large_alloc(Heap* h, size_t size, size_t align, bool zero) {
  maintenance_maybe();
  if (h != &g_empty_heap) trim_maybe(h, kTrimUsSlowPath);
  size_t bsize = round_page(size);
  size_t off;
  Segment* s;
  Page* pg;
  {
    // The block's record is written under the lock: stats read it there.
    LockGuard g;
    s = segment_large_alloc_locked(bsize, align, &off);
    if (!s) {
      errno = ENOMEM;
      return nullptr;
    }
    if (h != &g_empty_heap) heap_large_link_locked(h, s);
    pg = &s->pages[0];
    pg->start = reinterpret_cast<uint8_t*>(s) + off;
    pg->block_size = bsize;
    pg->divc = kLargeDivc;
    pg->capacity = pg->reserved = pg->used = 1;
    pg->kind = kKindLarge;
    pg->in_use = 1;
    pg->owner_fast.store(nullptr, std::memory_order_relaxed);
    pg->heap.store(nullptr, std::memory_order_relaxed);
    s->used_pages = 1;
  }
  stats_add(g_os_stats.large_allocs, 1);
  // Only the part a previous user touched needs zeroing (all of it when
  // MADV_FREE may have left old bytes in purged pages).
  size_t dirty = s->lazy ? s->mapped_size : s->dirty_end;
  if (zero && dirty > off) memset(pg->start, 0, size < dirty - off ? size : dirty - off);
  return pg->start;
}

void large_free(Page* pg) {
  Segment* s = segment_of_page(pg);
  LockGuard g;
  pg->in_use = 0;
  heap_large_unlink_locked(s);
  segment_large_free_locked(s, os_now_ms());
}

void* large_resize(Page* pg, size_t size) {
  // Under the lock: the segment may move, and stats read its record.
  LockGuard g;
  Segment* s = segment_of_page(pg);
  size_t off = static_cast<size_t>(pg->start - reinterpret_cast<uint8_t*>(s));
  size_t bsize = round_page(size);
  size_t old = pg->block_size;
  // Remember how far the block reached: what it leaves behind must be
  // zeroed before calloc hands it out again.
  if (off + old > s->dirty_end) s->dirty_end = off + old;
  if (off + bsize <= s->mapped_size) {
    // Shrinking a huge block by more than half gives the tail back.
    if (s->mapped_size > kSegmentSize && bsize < old / 2) {
      size_t mapped = round_page(off + bsize);
      if (mapped < kSegmentSize) mapped = kSegmentSize;
      if (Segment* r = segment_large_remap_locked(s, mapped)) s = r;
    } else if (bsize < old) {
      os_purge(pg->start + bsize, old - bsize);
    }
    pg = &s->pages[0];
    pg->block_size = bsize;
    return pg->start;
  }
  // Grow the mapping, with slack so that a block grown in small steps does
  // not remap every time (untouched slack costs no memory).
  Segment* r = segment_large_remap_locked(s, round_page(off + bsize + bsize / 8));
  if (!r) return nullptr;
  pg = &r->pages[0];
  pg->start = reinterpret_cast<uint8_t*>(r) + off;
  pg->block_size = bsize;
  return pg->start;
}

}  // namespace am
