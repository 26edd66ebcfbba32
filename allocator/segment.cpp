#include "allocator/segment.h"

#include <cstring>

#include "allocator/background.h"
#include "allocator/filemap.h"
#include "allocator/heap.h"
#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/stats.h"
#include "allocator/trim.h"

namespace am {

alignas(64) uint8_t g_segmap[kSegmapSize];
std::atomic<uint64_t> g_last_purge_ms;
std::atomic<uint64_t> g_dirty_bytes;
// A slot or a cached segment became dirty since the last purge pass (under
// g_lock): with none and nothing left dirty then, a pass has nothing to do.
bool g_dirty_changed;

namespace {

// Segments with a free page slot, by page kind (kKindLarge: span segments).
Segment* g_partial[4];
Segment* g_cache;  // empty standard-size segments, newest first
size_t g_cache_bytes;
size_t g_cache_dirty;  // resident bytes of cached segments
// Cached segments may keep this much resident before the oldest are purged
// ahead of the delay: reuse without page faults, within a bounded RSS. (32
// MiB made the large workload purge and fault blocks back: 64 MiB is 1.23x
// its throughput for 1.2x its peak RSS, level with mimalloc's.)
constexpr size_t kCacheDirtyMax = 16 * kSegmentSize;
// Free page slots of span segments may keep this much resident; slots
// freed past it are purged at once. (Spans hold what used to take a
// segment each, of which the cache kept 64: on the fragment workload about
// 10 MiB, on the realloc workload 13 MiB.)
constexpr size_t kSpanDirtyMax = 4 * kSegmentSize;
size_t g_span_dirty;  // resident bytes of free span slots
// A span's slots are looked for in this many segments at most.
constexpr unsigned kSpanLook = 8;
// Mappings up to this size are kept for reuse; larger ones are unmapped.
constexpr size_t kMaxCachedMapping = 64 * kSegmentSize;
Segment* g_all;  // every live segment

void list_push(Segment*& head, Segment* s) {
  s->prev = nullptr;
  s->next = head;
  if (head) head->prev = s;
  head = s;
}

void list_remove(Segment*& head, Segment* s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    head = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = nullptr;
}

void all_push(Segment* s) {
  s->all_prev = nullptr;
  s->all_next = g_all;
  if (g_all) g_all->all_prev = s;
  g_all = s;
}

void all_remove(Segment* s) {
  if (s->all_prev)
    s->all_prev->all_next = s->all_next;
  else
    g_all = s->all_next;
  if (s->all_next) s->all_next->all_prev = s->all_prev;
}

void purge_range(Segment* s, uint8_t* p, size_t n) {
  if (s->file_backed)
    filemap_purge(s, p, n);
  else
    os_purge(p, n);
}

// Free slot `j` of span segment `s` was just purged: not resident any more,
// but with MADV_FREE it may still read as its old bytes.
void span_slot_purged(Segment* s, uint32_t j) {
  s->pages[j].dirty = 0;
  s->span_dirty &= ~(uint64_t{1} << j);
  if (g_options.purge_free) s->span_lazy |= uint64_t{1} << j;
}

// A cached segment is purged past its header, which holds the cache links.
void purge_cached(Segment* s) {
  if (s->dirty_end > kHeaderBytes)
    purge_range(s, reinterpret_cast<uint8_t*>(s) + kHeaderBytes, s->dirty_end - kHeaderBytes);
  g_cache_dirty -= s->dirty_end;
  s->purged = 1;
  s->dirty_end = 0;
}

void segmap_set(Segment* s, bool live) {
  uintptr_t idx = reinterpret_cast<uintptr_t>(s) >> kSegmentShift;
  g_segmap[idx] = live ? static_cast<uint8_t>(1 + s->kind) : 0;
  size_t slots = (s->mapped_size + kSegmentSize - 1) >> kSegmentShift;
  for (size_t i = 1; i < slots; i++) g_segmap[idx + i] = live ? kMapTail : 0;
}

// Takes from the cache a segment of `min_size` to `max_size` mapped bytes:
// the one whose resident part covers `need_end` bytes most closely (so the
// caller neither faults nor carries a large resident tail), else the one
// with the largest resident part.
Segment* cache_take(size_t need_end, size_t min_size, size_t max_size, bool file_backed) {
  Segment** best = nullptr;
  for (Segment** link = &g_cache; *link; link = &(*link)->next) {
    Segment* s = *link;
    if (s->mapped_size < min_size || s->mapped_size > max_size) continue;
    if (s->file_backed != file_backed) continue;
    if (!best) {
      best = link;
      continue;
    }
    size_t b = (*best)->dirty_end;
    bool s_covers = s->dirty_end >= need_end, b_covers = b >= need_end;
    if (s_covers ? (!b_covers || s->dirty_end < b) : (!b_covers && s->dirty_end > b)) best = link;
  }
  if (!best) return nullptr;
  Segment* s = *best;
  *best = s->next;
  g_cache_bytes -= s->mapped_size;
  if (!s->purged) g_cache_dirty -= s->dirty_end;
  return s;
}

// A segment of at least `size` bytes (4 MiB for small and medium ones),
// from the cache or the OS, with a clean header.
Segment* segment_take(uint8_t kind, size_t size, size_t need_end) {
  // A large block may take a cached mapping up to twice its need.
  size_t max_size =
      kind == kSegLarge ? (size < kSegmentSize ? 2 * kSegmentSize : 2 * size) : kSegmentSize;
  // With AMALLOC_MESH, pages live in the memory file (large blocks never).
  bool file_backed = g_options.mesh && kind != kSegLarge && kind != kSegSpan;
  Segment* s = cache_take(need_end, size, max_size, file_backed);
  const bool cached = s != nullptr;
  size_t dirty_end = 0;
  uint64_t cached_at = 0;
  size_t mapped = size;
  if (s) {
    dirty_end = s->purged ? 0 : s->dirty_end;
    cached_at = s->cached_at;
    mapped = s->mapped_size;
    if (s->kind == kSegLarge && kind == kSegLarge) {
      // A large segment only ever writes pages[0] of its page table (16
      // KiB, zeroed when it was taken): the header fields and that entry.
      memset(static_cast<void*>(&s->pages[0]), 0, sizeof(Page));
      auto* fields = reinterpret_cast<uint8_t*>(&s->kind);
      memset(fields, 0, static_cast<size_t>(reinterpret_cast<uint8_t*>(s + 1) - fields));
    } else {
      memset(static_cast<void*>(s), 0, sizeof(Segment));
    }
  } else {
    s = file_backed ? filemap_segment_map() : nullptr;
    if (!s) {
      file_backed = false;
      s = static_cast<Segment*>(os_map_aligned(size, kSegmentSize));
    }
    if (!s) return nullptr;  // a fresh mapping reads as zeros
  }
  s->kind = kind;
  s->file_backed = file_backed;
  s->lazy = cached && g_options.purge_free;
  s->mapped_size = mapped;
  s->dirty_end = dirty_end;
  uint32_t span = static_cast<uint32_t>(page_slots(s));
  for (uint32_t i = 0; i < kMaxPages && kind != kSegLarge; i++) {
    s->pages[i].dirty = dirty_end > size_t{i} << kSlotShift;  // any part of it
    if (kind == kSegSpan && i >= kFirstSlot && s->pages[i].dirty) {
      g_span_dirty += kSlotSize;
      s->span_dirty |= uint64_t{1} << i;
    }
    s->pages[i].retired_at = cached_at;
    if (kind == kSegMedium && i >= kFirstSlot)
      s->pages[i].span_off = static_cast<uint8_t>((i - kFirstSlot) % span);
  }
  if (kind == kSegSpan) {
    s->span_free = ~uint64_t{0} << kFirstSlot;
    if (s->lazy) s->span_lazy = s->span_free;
  }
  all_push(s);
  segmap_set(s, true);
  return s;
}

void segment_give_back(Segment* s, uint64_t now) {
  segmap_set(s, false);
  all_remove(s);
  if (s->mapped_size <= kMaxCachedMapping &&
      g_cache_bytes + s->mapped_size <= size_t{g_options.segment_cache} * kSegmentSize) {
    if (s->kind == kSegLarge) {
      // What the block reached, or what an earlier user left resident.
      size_t end = static_cast<size_t>(s->pages[0].start - reinterpret_cast<uint8_t*>(s)) +
                   s->pages[0].block_size;
      if (end > s->dirty_end) s->dirty_end = end;
    } else {
      // Up to the last page slot not purged yet (slot 0 too with meshing:
      // its live bitmaps): the decay purges a segment's pages one by one.
      // Slots past the last page (a medium segment's last seven) may hold
      // what an earlier life of the segment left: those keep the old mark.
      size_t end = s->file_backed ? kSlotSize : kHeaderBytes, tail = 0;
      size_t span = page_slots(s);
      for (uint32_t i = kFirstSlot; i <= last_slot(s); i += static_cast<uint32_t>(span)) {
        tail = (i + span) << kSlotShift;
        if (s->pages[i].dirty) end = tail;
      }
      if (s->dirty_end > tail && s->dirty_end > end) end = s->dirty_end;
      s->dirty_end = end;
    }
    if (s->dirty_end > s->mapped_size) s->dirty_end = s->mapped_size;
    s->cached_at = now;
    s->purged = 0;
    g_dirty_changed = true;
    background_kick();
    s->next = g_cache;
    g_cache = s;
    g_cache_bytes += s->mapped_size;
    g_cache_dirty += s->dirty_end;
    if (g_options.purge_delay_ms == 0) purge_cached(s);
    // Over the cap: purge from the oldest end.
    while (g_cache_dirty > kCacheDirtyMax) {
      Segment* oldest = nullptr;
      for (Segment* c = g_cache; c; c = c->next)
        if (!c->purged) oldest = c;
      if (!oldest) break;
      purge_cached(oldest);
    }
  } else {
    if (s->file_backed) filemap_segment_release(s);
    os_unmap(s, s->mapped_size);
  }
}

}  // namespace

Page* page_lookup(uintptr_t a) {
  uint8_t code = segmap_code(a);
  if (code == 0) return nullptr;
  if (code == kMapTail) {
    uintptr_t idx = a >> kSegmentShift;
    while (g_segmap[idx] == kMapTail) idx--;
    return &reinterpret_cast<Segment*>(idx << kSegmentShift)->pages[0];
  }
  return page_resolve(slot_page(a));
}

Page* segment_page_alloc_locked(uint8_t kind, bool resident_only) {
  Segment* s = g_partial[kind];
  if (!s && resident_only) return nullptr;
  if (!s) {
    s = segment_take(kind == kKindSmall ? kSegSmall : kSegMedium, kSegmentSize, kSegmentSize);
    if (!s) return nullptr;
    list_push(g_partial[kind], s);
    s->in_partial = 1;
  }
  // Slot 0 holds the header. Prefer a page whose memory is still resident.
  Page* pick = nullptr;
  for (uint32_t i = kFirstSlot; i <= last_slot(s); i += static_cast<uint32_t>(page_slots(s))) {
    Page* pg = &s->pages[i];
    if (pg->in_use) continue;
    if (pg->dirty) {
      pick = pg;
      break;
    }
    if (!pick) pick = pg;
  }
  if (resident_only && !pick->dirty) return nullptr;
  pick->in_use = 1;
  pick->kind = kind;
  if (++s->used_pages == pages_per_segment(s)) {
    list_remove(g_partial[kind], s);
    s->in_partial = 0;
  }
  return pick;
}

namespace {

void page_free(Page* pg, uint64_t now, bool purge_now) {
  Segment* s = segment_of_page(pg);
  pg->in_use = 0;
  pg->kind = kKindNone;
  pg->dirty = 1;
  pg->retired_at = now;
  pg->free = nullptr;
  pg->used = 0;
  pg->capacity = 0;
  pg->block_size = 0;
  trim_forget(pg);
  pg->owner_fast.store(nullptr, std::memory_order_relaxed);
  pg->heap.store(nullptr, std::memory_order_relaxed);
  if (purge_now || g_options.purge_delay_ms == 0) {
    purge_range(s, page_area(s, pg), page_area_size(s));
    pg->dirty = 0;
  } else {
    g_dirty_changed = true;
    background_kick();
  }
  uint8_t kind = s->kind == kSegSmall ? kKindSmall : kKindMedium;
  if (--s->used_pages == 0) {
    if (s->in_partial) list_remove(g_partial[kind], s);
    segment_give_back(s, now);  // may unmap s: pg is not touched after this
    return;
  }
  if (!s->in_partial) {
    list_push(g_partial[kind], s);
    s->in_partial = 1;
  }
}

}  // namespace

void segment_page_free_locked(Page* pg, uint64_t now) { page_free(pg, now, false); }
void segment_page_free_purged_locked(Page* pg, uint64_t now) { page_free(pg, now, true); }

Segment* segment_large_alloc_locked(size_t size, size_t align, size_t* offset) {
  size_t off = kLargeOffset;
  if (align > off) off = align;
  // An alignment of 4 MiB or more puts the block 4 MiB into its mapping:
  // the header stays in the first 4 MiB, and the block's own 4 MiB slot is
  // a kMapTail slot of the segment map.
  bool shifted = align >= kSegmentSize;
  if (shifted) off = kSegmentSize;
  size_t need = off + size;
  Segment* s;
  if (!shifted) {
    size_t mapped = need <= kSegmentSize ? kSegmentSize : (need + kOsPage - 1) & ~(kOsPage - 1);
    s = segment_take(kSegLarge, mapped, need);
    if (!s) return nullptr;
  } else {
    size_t mapped = (need + kOsPage - 1) & ~(kOsPage - 1);
    s = static_cast<Segment*>(shifted ? os_map_aligned(mapped, align, kSegmentSize)
                                      : os_map_aligned(mapped, kSegmentSize));
    if (!s) return nullptr;
    s->kind = kSegLarge;
    s->mapped_size = mapped;
    all_push(s);
    segmap_set(s, true);
  }
  s->used_pages = 1;
  *offset = off;
  return s;
}

void segment_large_free_locked(Segment* s, uint64_t now) { segment_give_back(s, now); }

namespace {

// (No popcnt instruction in the baseline x86-64 target: libgcc's loop.)
uint32_t bit_count(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555);
  x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f;
  return static_cast<uint32_t>((x * 0x0101010101010101) >> 56);
}

// Where a span of `k` slots fits (0: nowhere) and how many of its slots
// may be resident.
struct SpanRun {
  uint32_t at = 0, resident = 0;
};

// The most resident place for a span of `k` in `s` (fewer faults, and it
// reuses memory already counted in RSS), then one that starts a run of
// free slots (holes stay whole), then the lowest.
SpanRun span_find(const Segment* s, uint32_t k) {
  // Bit w of `fits`: slots w .. w+k-1 are all free.
  uint64_t fits = s->span_free;
  for (uint32_t have = 1; have < k && fits;) {
    uint32_t step = have < k - have ? have : k - have;
    fits &= fits >> step;
    have += step;
  }
  const uint64_t window = k >= 64 ? ~uint64_t{0} : (uint64_t{1} << k) - 1;
  SpanRun best;
  bool best_starts = false;
  for (; fits; fits &= fits - 1) {
    auto w = static_cast<uint32_t>(__builtin_ctzll(fits));
    uint32_t res = bit_count(s->span_dirty & (window << w));
    bool starts = !((s->span_free >> (w - 1)) & 1);
    if (best.at == 0 || res > best.resident || (res == best.resident && starts && !best_starts)) {
      best = {w, res};
      best_starts = starts;
      if (res == k && starts) break;
    }
  }
  return best;
}

Page* span_claim(Segment* s, uint32_t at, uint32_t k, uint64_t* old_bytes) {
  const uint64_t mine = (k >= 64 ? ~uint64_t{0} : (uint64_t{1} << k) - 1) << at;
  *old_bytes = (s->span_dirty | s->span_lazy) & mine;
  s->span_lazy &= ~mine;
  for (uint32_t j = at; j < at + k; j++) {
    Page& p = s->pages[j];
    if (p.dirty) g_span_dirty -= kSlotSize;
    p.in_use = 1;
    p.kind = kKindLarge;
    p.span_off = static_cast<uint8_t>(j - at);
    s->span_free &= ~(uint64_t{1} << j);
  }
  s->pages[at].slots = static_cast<uint8_t>(k);
  s->used_pages += k;
  if (s->used_pages == pages_per_segment(s)) {
    list_remove(g_partial[kKindLarge], s);
    s->in_partial = 0;
  }
  return &s->pages[at];
}

// Slots [from, to) of span segment `s` are free again; the first `touched`
// of them held the block's bytes. Gives `s` back when it is empty.
void span_release(Segment* s, uint32_t from, uint32_t to, uint32_t touched, uint64_t now) {
  bool kept = false;  // resident slots among those freed
  for (uint32_t j = from; j < to; j++) {
    Page& p = s->pages[j];
    p.in_use = 0;
    p.kind = kKindNone;
    p.span_off = 0;
    p.retired_at = now;
    s->span_free |= uint64_t{1} << j;
    if (j - from < touched) p.dirty = 1;
    if (!p.dirty) continue;
    if (g_options.purge_delay_ms == 0 || g_span_dirty + kSlotSize > kSpanDirtyMax) {
      purge_range(s, page_area(s, &p), kSlotSize);
      span_slot_purged(s, j);
    } else {
      s->span_dirty |= uint64_t{1} << j;
      g_span_dirty += kSlotSize;
      kept = true;
    }
  }
  g_dirty_changed = true;
  background_kick();
  s->used_pages -= to - from;
  if (s->used_pages == 0) {
    // Its resident slots go with it to the cache (segment_give_back).
    for (uint32_t j = kFirstSlot; j < kMaxPages; j++) g_span_dirty -= s->pages[j].dirty * kSlotSize;
    if (s->in_partial) list_remove(g_partial[kKindLarge], s);
    segment_give_back(s, now);  // may unmap s
    return;
  }
  // Segments with resident free slots go first, where spans look.
  if (s->in_partial && !kept) return;
  if (s->in_partial) list_remove(g_partial[kKindLarge], s);
  list_push(g_partial[kKindLarge], s);
  s->in_partial = 1;
}

uint32_t slots_touched(const Page* pg) {
  return static_cast<uint32_t>((pg->block_size + kSlotSize - 1) >> kSlotShift);
}

}  // namespace

size_t segment_span_trim_tail_locked(Page* pg) {
  Segment* s = segment_of_page(pg);
  uint8_t* lo = pg->start + pg->block_size;
  uint8_t* hi = pg->start + size_t{pg->slots} * kSlotSize;
  if (s->kind != kSegSpan || hi <= lo) return 0;
  purge_range(s, lo, static_cast<size_t>(hi - lo));
  return static_cast<size_t>(hi - lo);
}

Page* segment_span_alloc_locked(uint32_t slots, uint64_t* old_bytes) {
  // Segments that freed slots last come first in the list: the best run of
  // the first few that hold one (resident slots, see span_find), looking
  // at a bounded number of segments in all (a new one past them).
  Segment* best_s = nullptr;
  SpanRun best;
  unsigned looked = 0, fit = 0;
  for (Segment* s = g_partial[kKindLarge]; s && fit < kSpanLook && looked < 4 * kSpanLook;
       s = s->next) {
    looked++;
    if (pages_per_segment(s) - s->used_pages < slots) continue;
    SpanRun r = span_find(s, slots);
    if (r.at == 0) continue;
    fit++;
    if (!best_s || r.resident > best.resident) {
      best_s = s;
      best = r;
    }
    if (best.resident == slots) break;
  }
  if (best_s) return span_claim(best_s, best.at, slots, old_bytes);
  Segment* s = segment_take(kSegSpan, kSegmentSize, kSegmentSize);
  if (!s) return nullptr;
  list_push(g_partial[kKindLarge], s);
  s->in_partial = 1;
  return span_claim(s, kFirstSlot, slots, old_bytes);
}

void segment_span_free_locked(Page* pg, uint64_t now) {
  Segment* s = segment_of_page(pg);
  auto i = static_cast<uint32_t>(pg - s->pages);
  uint32_t k = pg->slots, touched = slots_touched(pg);
  pg->slots = 0;
  pg->block_size = 0;
  span_release(s, i, i + k, touched, now);  // may unmap s: pg is not touched after
}

bool segment_span_resize_locked(Page* pg, uint32_t slots, uint64_t now) {
  Segment* s = segment_of_page(pg);
  auto i = static_cast<uint32_t>(pg - s->pages);
  uint32_t k = pg->slots;
  if (slots < k) {
    uint32_t touched = slots_touched(pg);
    pg->slots = static_cast<uint8_t>(slots);
    span_release(s, i + slots, i + k, touched > slots ? touched - slots : 0, now);
    return true;
  }
  if (i + slots > kMaxPages) return false;
  for (uint32_t j = i + k; j < i + slots; j++)
    if (s->pages[j].in_use) return false;
  for (uint32_t j = i + k; j < i + slots; j++) {
    Page& p = s->pages[j];
    if (p.dirty) g_span_dirty -= kSlotSize;
    s->span_free &= ~(uint64_t{1} << j);
    s->span_lazy &= ~(uint64_t{1} << j);  // a realloc leaves new bytes undefined
    p.in_use = 1;
    p.kind = kKindLarge;
    p.span_off = static_cast<uint8_t>(j - i);
  }
  s->used_pages += slots - k;
  pg->slots = static_cast<uint8_t>(slots);
  if (s->used_pages == pages_per_segment(s) && s->in_partial) {
    list_remove(g_partial[kKindLarge], s);
    s->in_partial = 0;
  }
  return true;
}

Segment* segment_large_remap_locked(Segment* s, size_t new_mapped) {
  Heap* owner = s->pages[0].large_owner;
  heap_large_unlink_locked(&s->pages[0]);
  segmap_set(s, false);
  all_remove(s);
  auto* r = static_cast<Segment*>(os_remap_aligned(s, s->mapped_size, new_mapped, kSegmentSize));
  Segment* live = r ? r : s;
  if (r) {
    r->mapped_size = new_mapped;
    stats_add(g_os_stats.huge_remaps, 1);
  }
  all_push(live);
  segmap_set(live, true);
  if (owner) heap_large_link_locked(owner, &live->pages[0]);
  return r;
}

namespace {

// What of `total` is left after `dt` ms of halving every `half` ms; 2^-x is
// taken linearly between whole halvings (within 9%).
uint64_t decayed(uint64_t total, uint64_t dt, uint64_t half) {
  uint64_t h = dt / half;
  if (h >= 63) return 0;
  uint64_t left = total >> h;
  return left - left * (dt % half) / (2 * half);
}

// Calls f(bytes, age, purge) for every resident free unit: a cached segment
// that is not purged, or a free page slot that is dirty.
template <class F>
void for_each_dirty(uint64_t now, F f) {
  for (Segment* s = g_cache; s; s = s->next)
    if (!s->purged) f(s->dirty_end, now - s->cached_at, [s] { purge_cached(s); });
  for (Segment* s = g_all; s; s = s->all_next) {
    if (s->kind == kSegLarge) continue;
    for (uint32_t i = kFirstSlot; i <= last_slot(s); i += static_cast<uint32_t>(page_slots(s))) {
      Page* pg = &s->pages[i];
      if (pg->in_use || !pg->dirty) continue;
      f(page_area_size(s), now - pg->retired_at, [s, pg] {
        purge_range(s, page_area(s, pg), page_area_size(s));
        pg->dirty = 0;
        if (s->kind == kSegSpan) {
          g_span_dirty -= kSlotSize;
          span_slot_purged(s, static_cast<uint32_t>(pg - s->pages));
        }
      });
    }
  }
}

}  // namespace

// Purge with decay: free memory stays resident for reuse, but its amount
// halves every purge delay, oldest first, so RSS falls smoothly after a
// burst and a burst that comes back soon finds memory still there. Nothing
// younger than a quarter of the delay goes (no thrashing within a burst);
// nothing older than eight delays stays.
uint64_t segment_purge_locked(uint64_t now, bool force) {
  uint64_t delay = g_options.purge_delay_ms;
  uint64_t last = g_last_purge_ms.exchange(now, std::memory_order_relaxed);
  if (force || delay == 0) {
    for_each_dirty(now, [](size_t, uint64_t, auto purge) { purge(); });
    g_dirty_bytes.store(0, std::memory_order_relaxed);
    return kNeverMs;
  }
  // Cheap when nothing is dirty: a pass walks every slot under g_lock, which
  // page_new of the allocating threads waits for.
  if (!g_dirty_changed && g_dirty_bytes.load(std::memory_order_relaxed) == 0) return kNeverMs;
  g_dirty_changed = false;
  uint64_t total = 0;
  for_each_dirty(now, [&](size_t bytes, uint64_t, auto) { total += bytes; });
  uint64_t dt = now > last ? now - last : 0;
  uint64_t budget = total - decayed(total, dt, delay);
  // Oldest first: passes over falling age thresholds until the budget is met.
  for (uint64_t min_age = 8 * delay; min_age >= delay / 4 && min_age > 0; min_age /= 2) {
    for_each_dirty(now, [&](size_t bytes, uint64_t age, auto purge) {
      if (age < min_age || (budget == 0 && age < 8 * delay)) return;
      purge();
      total -= bytes;
      budget = budget > bytes ? budget - bytes : 0;
    });
    if (budget == 0) break;
  }
  g_dirty_bytes.store(total, std::memory_order_relaxed);
  if (total == 0) return kNeverMs;
  uint64_t step = delay / 8 > 2 ? delay / 8 : 2;
  return now + step;
}

void segment_for_each_locked(void (*f)(Segment* s, bool cached, void* ctx), void* ctx) {
  for (Segment* s = g_all; s; s = s->all_next) f(s, false, ctx);
  for (Segment* s = g_cache; s; s = s->next) f(s, true, ctx);
}

}  // namespace am
