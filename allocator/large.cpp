#include "allocator/large.h"

#include <errno.h>

#include <cstring>

#include "allocator/background.h"
#include "allocator/heap.h"
#include "allocator/lock.h"
#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/page.h"
#include "allocator/segment.h"
#include "allocator/stats.h"
#include "allocator/trim.h"

namespace am {

namespace {

size_t round_page(size_t n) { return (n + kOsPage - 1) & ~(kOsPage - 1); }
// Page slots of a span of `bsize` bytes (at most a segment's).
uint32_t span_slots(size_t bsize) {
  return static_cast<uint32_t>((bsize + kSlotSize - 1) >> kSlotShift);
}

// Only offset 0 passes the block check of a large page.
constexpr uint64_t kLargeDivc = divisibility_magic(uint64_t{1} << 32);

}  // namespace

void* large_alloc(Heap* h, size_t size, size_t align, bool zero) {
  background_maybe_start();
  maintenance_maybe();
  if (h != &g_empty_heap && trim_due(h)) {
    HeapLock lock(h);  // a pass works on the heap's pages
    trim_maybe(h, kTrimUsSlowPath);
  }
  size_t bsize = round_page(size);
  const bool span = bsize <= kSpanMax && align <= kSlotSize;
  Segment* s;
  Page* pg;
  size_t dirty = 0;        // bytes at the block's start that may hold old data
  uint64_t old_slots = 0;  // or, for a span: its slots that may
  {
    // The block's record is written under the lock: stats read it there.
    LockGuard g;
    if (span) {
      pg = segment_span_alloc_locked(span_slots(bsize), &old_slots);
      if (!pg) {
        errno = ENOMEM;
        return nullptr;
      }
      s = segment_of_page(pg);
      pg->start = page_area(s, pg);
      old_slots >>= pg - s->pages;  // bit i: the block's slot i
      // Past the block's end in its last slot: resident if that slot was.
      uint32_t k = span_slots(bsize);
      bool tail = size_t{k} * kSlotSize - bsize >= kOsPage && (old_slots >> (k - 1) & 1);
      pg->tail_state = tail ? kTailResident : 0;
    } else {
      size_t off;
      s = segment_large_alloc_locked(bsize, align, &off);
      if (!s) {
        errno = ENOMEM;
        return nullptr;
      }
      pg = &s->pages[0];
      pg->start = reinterpret_cast<uint8_t*>(s) + off;
      pg->tail_state = 0;
      // Only the part a previous user touched needs zeroing (all of it
      // when MADV_FREE may have left old bytes in purged pages).
      size_t end = s->lazy ? s->mapped_size : s->dirty_end;
      dirty = end > off ? end - off : 0;
    }
    pg->block_size = bsize;
    pg->divc = kLargeDivc;
    pg->capacity = pg->reserved = pg->used = 1;
    pg->kind = kKindLarge;
    pg->in_use = 1;
    pg->owner_fast.store(nullptr, std::memory_order_relaxed);
    pg->heap.store(nullptr, std::memory_order_relaxed);
    pg->large_owner = nullptr;
    if (h != &g_empty_heap) heap_large_link_locked(h, pg);
  }
  stats_add(g_os_stats.large_allocs, 1);
  if (!zero) return pg->start;
  if (dirty > 0) memset(pg->start, 0, size < dirty ? size : dirty);
  for (; old_slots != 0; old_slots &= old_slots - 1) {
    size_t at = static_cast<size_t>(__builtin_ctzll(old_slots)) << kSlotShift;
    if (at < size) memset(pg->start + at, 0, size - at < kSlotSize ? size - at : kSlotSize);
  }
  return pg->start;
}

void large_free_locked(Page* pg, uint64_t now) {
  Segment* s = segment_of_page(pg);
  heap_large_unlink_locked(pg);
  pg->in_use = 0;
  if (s->kind == kSegSpan)
    segment_span_free_locked(pg, now);
  else
    segment_large_free_locked(s, now);
}

bool large_free(Page* pg) {
  LockGuard g;
  if (!pg->in_use || pg->kind != kKindLarge || pg->span_off != 0) return false;
  large_free_locked(pg, os_now_ms());
  return true;
}

void* large_resize(Page* pg, size_t size) {
  // Under the lock: the segment may move, and stats read its record.
  LockGuard g;
  Segment* s = segment_of_page(pg);
  size_t bsize = round_page(size);
  if (s->kind == kSegSpan) {
    // In place while the slots that follow are free; else the caller moves
    // it (to a segment of its own past kSpanMax, where it grows in place).
    if (bsize > kSegmentSize - kSlotSize ||
        !segment_span_resize_locked(pg, span_slots(bsize), os_now_ms()))
      return nullptr;
    // Shrunk, the new tail was written; grown, it may lie in a resident
    // slot: either way a pass may give it back.
    bool tail = size_t{pg->slots} * kSlotSize - bsize >= kOsPage;
    pg->block_size = bsize;
    pg->tail_state = tail ? kTailResident : 0;
    return pg->start;
  }
  size_t off = static_cast<size_t>(pg->start - reinterpret_cast<uint8_t*>(s));
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
