// Segments: the segment map (is this pointer ours?), page slots, large and
// huge segments, the cache of empty segments, and purging.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "allocator/config.h"
#include "allocator/types.h"

namespace am {

// One byte per 4 MiB of address space. A static array: untouched parts
// cost no memory. Codes: 0, not ours; kMapTail, a later 4 MiB of a huge
// mapping (its header is in an earlier slot); otherwise 1 + the
// SegmentKind of the segment that starts there.
extern uint8_t g_segmap[kSegmapSize];
constexpr uint8_t kMapTail = 1;

AM_INLINE uint8_t segmap_code(uintptr_t a) {
  uintptr_t idx = a >> kSegmentShift;
  if (AM_UNLIKELY(idx >= kSegmapSize)) return 0;
  return g_segmap[idx];
}

// Whether `a` lies in a segment's first 4 MiB, where slot_page() may be
// read. NULL, foreign, garbage and huge-tail pointers answer false, and the
// check never faults.
AM_INLINE bool segmap_fast(uintptr_t a) { return segmap_code(a) > kMapTail; }

AM_INLINE Segment* segment_of(uintptr_t a) { return reinterpret_cast<Segment*>(a & ~kSegmentMask); }

// The Page entry of the slot holding `a`: segment + slot * sizeof(Page).
AM_INLINE Page* slot_page(uintptr_t a) {
  return reinterpret_cast<Page*>((a & ~kSegmentMask) +
                                 ((a >> (kSlotShift - 8)) & ((kMaxPages - 1) << 8)));
}

inline Segment* segment_of_page(const Page* pg) {
  return segment_of(reinterpret_cast<uintptr_t>(pg));
}

// The page a slot entry belongs to (medium pages span slots; a large
// segment's one page is described by pages[0]).
inline Page* page_resolve(Page* slot) {
  Segment* s = segment_of_page(slot);
  if (s->kind == kSegLarge) return &s->pages[0];
  return slot - slot->span_off;
}

// The page of any pointer we own (resolved), or nullptr. For slow paths.
Page* page_lookup(uintptr_t a);

inline size_t page_slots(const Segment* s) { return s->kind == kSegMedium ? kMediumSpan : 1; }
// Page slots of a small or medium segment: first slot of each page (slot 0
// holds the header), last one, and how many pages a segment holds.
constexpr uint32_t kFirstSlot = 1;
inline uint32_t last_slot(const Segment* s) {
  return kMaxPages - static_cast<uint32_t>(page_slots(s));
}
inline uint32_t pages_per_segment(const Segment* s) {
  return (kMaxPages - kFirstSlot) / static_cast<uint32_t>(page_slots(s));
}
// The header's OS pages: a cached segment keeps them (its cache links).
constexpr size_t kHeaderBytes = (sizeof(Segment) + kOsPage - 1) & ~(kOsPage - 1);
inline uint8_t* page_area(Segment* s, const Page* pg) {
  return reinterpret_cast<uint8_t*>(s) + (static_cast<size_t>(pg - s->pages) << kSlotShift);
}
inline size_t page_area_size(const Segment* s) { return page_slots(s) << kSlotShift; }

// All of the following run under g_lock.

// A free page slot of the given kind (kKindSmall / kKindMedium), marked in
// use; nullptr when the OS has no memory, or, with `resident_only`, when
// the best slot at hand would fault.
Page* segment_page_alloc_locked(uint8_t kind, bool resident_only = false);
// Give a page slot back (its blocks are all free).
void segment_page_free_locked(Page* pg, uint64_t now);
// The same, returning its memory to the OS at once (a page built for a
// burst that did not come).
void segment_page_free_purged_locked(Page* pg, uint64_t now);
// A segment for one block of `size` bytes at an `align`-aligned offset of
// at least kLargeOffset; returns the block's offset in *offset.
Segment* segment_large_alloc_locked(size_t size, size_t align, size_t* offset);
// Release a large/huge segment (to the cache or the OS).
void segment_large_free_locked(Segment* s, uint64_t now);
// A span of `slots` page slots for a large block (kSegSpan), where most of
// them are resident; *old_bytes gets the slots (bit i: the segment's slot
// i) that may hold old bytes, which calloc zeroes. nullptr when the OS has
// no memory.
Page* segment_span_alloc_locked(uint32_t slots, uint64_t* old_bytes);
// Give a span's slots back (the block's Page, which must be in no heap's
// list).
void segment_span_free_locked(Page* pg, uint64_t now);
// Give back what lies past a span's last byte in its last slot; returns
// the bytes (0 for a block of its own segment).
size_t segment_span_trim_tail_locked(Page* pg);
// Resize a span to `slots` in place: shrinking frees the slots past it,
// growing takes the free slots that follow; false when they are not free.
bool segment_span_resize_locked(Page* pg, uint32_t slots, uint64_t now);
// Remap a large/huge segment to `new_mapped` bytes (moving it if needed).
Segment* segment_large_remap_locked(Segment* s, size_t new_mapped);
// Return memory that has been free for longer than the purge delay (all
// free memory when `force`). Returns when the next purge falls due
// (kNeverMs: nothing is waiting).
constexpr uint64_t kNeverMs = ~uint64_t{0};
uint64_t segment_purge_locked(uint64_t now, bool force);

// Calls f for every segment, live (cached false) or in the cache.
void segment_for_each_locked(void (*f)(Segment* s, bool cached, void* ctx), void* ctx);

struct SegmentTotals {
  uint64_t committed;
  uint64_t in_use;
  uint64_t segments;
  uint64_t pages_in_use;
  uint64_t large_blocks;
};
SegmentTotals segment_totals_locked();
// The pages of each size class in use now (kNumClasses entries).
struct ClassTotals {
  uint64_t pages, live, carved, meshed, reserve;
};
void segment_class_totals_locked(ClassTotals* out);

// When the last purge pass ran (read without the lock by maintenance_maybe).
extern std::atomic<uint64_t> g_last_purge_ms;
// Free memory still resident after the last purge pass (it decays).
extern std::atomic<uint64_t> g_dirty_bytes;

}  // namespace am
