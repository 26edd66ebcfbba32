// What the segments hold, for the stats report (under g_lock): memory
// committed and in use, and the pages of each size class. Owners change
// their pages' counts without the lock, so these figures are approximate.
#include "allocator/mesh.h"
#include "allocator/segment.h"

namespace am {

namespace {

// Blocks in use, from a read its owner may race (it moves the head's
// bias and `used` apart): never below zero. A meshed page's come from its
// live bitmap (its `used` is the count it had when it was merged).
AM_APPROXIMATE_READS uint32_t live_blocks(Page& pg) {
  if (pg.meshed) return mesh_live_blocks(&pg);
  uint32_t used = pg.used, head = pg.is_head;
  return used > head ? used - head : 0;
}

// A page of the burst reserve: in use, owned by no heap, carved again from
// zero when taken (predict.cpp).
AM_APPROXIMATE_READS bool in_reserve(const Page& pg) {
  return pg.in_use && pg.capacity == 0 && !pg.heap.load(std::memory_order_relaxed);
}

bool has_pages(const Segment* s) { return s->kind == kSegSmall || s->kind == kSegMedium; }

AM_APPROXIMATE_READS void add_classes(Segment* s, bool cached, void* ctx) {
  if (cached || !has_pages(s)) return;
  auto* out = static_cast<ClassTotals*>(ctx);
  for (uint32_t i = kFirstSlot; i <= last_slot(s); i += static_cast<uint32_t>(page_slots(s))) {
    Page& pg = s->pages[i];
    if (!pg.in_use || pg.cls >= kNumClasses) continue;
    ClassTotals& t = out[pg.cls];
    if (in_reserve(pg)) {
      t.reserve++;
      continue;
    }
    t.pages++;
    t.live += live_blocks(pg);
    t.carved += pg.capacity;
    t.meshed += pg.meshed;
  }
}

AM_APPROXIMATE_READS void add_large(const Page& pg, SegmentTotals& t) {
  t.large_blocks++;
  t.in_use += pg.block_size;
  t.committed += pg.block_size;
}

AM_APPROXIMATE_READS void add_segment(Segment* s, bool cached, void* ctx) {
  SegmentTotals& t = *static_cast<SegmentTotals*>(ctx);
  if (cached) {
    t.committed += s->purged ? kHeaderBytes : s->dirty_end;
    return;
  }
  t.segments++;
  if (s->kind == kSegLarge) {
    const Page& pg = s->pages[0];
    add_large(pg, t);
    t.committed += static_cast<size_t>(pg.start - reinterpret_cast<uint8_t*>(s));
    return;
  }
  t.committed += sizeof(Segment);
  if (s->kind == kSegSpan) {
    for (uint32_t i = kFirstSlot; i < kMaxPages; i++) {
      const Page& pg = s->pages[i];
      if (pg.in_use && pg.span_off == 0)
        add_large(pg, t);
      else if (!pg.in_use && pg.dirty)
        t.committed += kSlotSize;
    }
    return;
  }
  for (uint32_t i = kFirstSlot; i <= last_slot(s); i += static_cast<uint32_t>(page_slots(s))) {
    Page& pg = s->pages[i];
    if (pg.in_use && !in_reserve(pg)) {
      t.pages_in_use++;
      t.in_use += uint64_t{live_blocks(pg)} * pg.block_size;
      // A meshed page's memory is its group's first page's.
      if (!pg.meshed || pg.mesh_primary == &pg)
        t.committed += uint64_t{pg.capacity} * pg.block_size;
    } else if (pg.in_use || pg.dirty) {
      t.committed += page_area_size(s);  // the reserve's (carved again later) or free
    }
  }
}

}  // namespace

void segment_class_totals_locked(ClassTotals* out) {
  for (unsigned c = 0; c < kNumClasses; c++) out[c] = ClassTotals{};
  segment_for_each_locked(add_classes, out);
}

SegmentTotals segment_totals_locked() {
  SegmentTotals t{};
  segment_for_each_locked(add_segment, &t);
  return t;
}

}  // namespace am
