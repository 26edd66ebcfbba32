#include "allocator/mesh.h"

#include <cstring>

#include "allocator/filemap.h"
#include "allocator/format.h"
#include "allocator/lock.h"
#include "allocator/os.h"
#include "allocator/page.h"
#include "allocator/queue.h"
#include "allocator/segment.h"
#include "allocator/stats.h"

namespace am {

void bad_pointer(const char* fn, const void* p);  // free.cpp

namespace {

// Live bitmaps sit in the header slot after the page table: 64 words a
// page (4096 blocks of 16 bytes); a medium page uses its first slot's.
constexpr size_t kBitsOffset = 24 * 1024;
constexpr unsigned kBitWords = kSlotSize / 16 / 64;
static_assert(sizeof(Segment) <= kBitsOffset);
static_assert(kBitsOffset + kMaxPages * kBitWords * 8 <= kSlotSize);

// Meshed pages make two mappings each: stay far below vm.max_map_count.
constexpr uint64_t kMaxMeshed = 8192;
// Candidates: pages at most half full. Groups open at a time per class.
constexpr unsigned kOpenGroups = 4;
constexpr unsigned kMaxMergesPerPass = 256;
constexpr unsigned kMaxExaminedPerPass = 512;

uint64_t* live_bits(Page* pg) {
  Segment* s = segment_of_page(pg);
  return reinterpret_cast<uint64_t*>(reinterpret_cast<uint8_t*>(s) + kBitsOffset) +
         static_cast<size_t>(pg - s->pages) * kBitWords;
}

inline unsigned bit_words(const Page* pg) { return (pg->reserved + 63) / 64; }

inline uint32_t block_index(const Page* pg, const void* p) {
  return static_cast<uint32_t>((static_cast<const uint8_t*>(p) - pg->start) / pg->block_size);
}

// The owner's view of a page: blocks carved and not on its free list.
unsigned compute_live(Page* pg, uint64_t* bits) {
  const unsigned words = bit_words(pg);
  for (unsigned w = 0; w < words; w++) {
    uint32_t lo = w * 64;
    bits[w] = pg->capacity >= lo + 64 ? ~uint64_t{0}
              : pg->capacity > lo     ? (uint64_t{1} << (pg->capacity - lo)) - 1
                                      : 0;
  }
  for (Block* b = pg->free; b; b = b->next) {
    uint32_t i = block_index(pg, b);
    bits[i / 64] &= ~(uint64_t{1} << (i % 64));
  }
  unsigned n = 0;
  for (unsigned w = 0; w < words; w++) n += static_cast<unsigned>(__builtin_popcountll(bits[w]));
  return n;
}

bool disjoint(const uint64_t* a, const uint64_t* b, unsigned words) {
  for (unsigned w = 0; w < words; w++)
    if (a[w] & b[w]) return false;
  return true;
}

inline uint64_t group_add(Page* primary, int64_t n) {
  return primary->xthread_free.fetch_add(static_cast<uint64_t>(n) << kMeshShift,
                                         std::memory_order_seq_cst) +
         (static_cast<uint64_t>(n) << kMeshShift);
}

// Frees that reached a page between its last collect and the exchange that
// set kXMesh: their bits are cleared and the group counted down (their
// blocks are not written: the page may be read-only now).
void drop_late_frees(Page* pg, uintptr_t old, Page* primary) {
  int64_t n = 0;
  uint64_t* bits = live_bits(pg);
  for (Block* b = xlist(old); b; b = b->next) {
    uint32_t i = block_index(pg, b);
    // Atomic: freers that saw kXMesh clear bits of the same word.
    __atomic_fetch_and(&bits[i / 64], ~(uint64_t{1} << (i % 64)), __ATOMIC_SEQ_CST);
    n++;
  }
  if (n) group_add(primary, -n);
}

// Takes a page off its owner: from here on its frees go to mesh_free.
void detach(Heap* h, Page* pg) {
  queue_remove(h, pg);
  pg->owner_fast.store(nullptr, std::memory_order_relaxed);
  pg->heap.store(nullptr, std::memory_order_release);
  pg->meshed = 1;
}

// A group's first page; the count holds one reference for the pass.
void freeze_primary(Heap* h, Page* a, unsigned live) {
  detach(h, a);
  a->mesh_primary = a;
  a->mesh_next = nullptr;
  uintptr_t old = a->xthread_free.exchange(kXMesh | (uintptr_t{live + 1} << kMeshShift),
                                           std::memory_order_seq_cst);
  drop_late_frees(a, old, a);
  stats_add(g_os_stats.meshed_pages, 1);
}

void release_group_locked(Page* a);

AM_COLD void die(const char* what, const void* p) {
  Out o;
  o.str("amalloc: mesh: ")
      .str(what)
      .ch(' ')
      .hex(reinterpret_cast<uintptr_t>(p))
      .str("; aborting\n");
  o.flush(2);
  abort();
}

// Merge page b (live bits `bits`, disjoint from the group's) into a's group.
bool merge(Heap* h, Page* a, unsigned a_live, Page* b, unsigned b_live) {
  Segment* sb = segment_of_page(b);
  uint8_t* area_b = page_area(sb, b);
  uint8_t* area_a = page_area(segment_of_page(a), a);
  const size_t n = page_area_size(sb);
  LockGuard g;  // one copy at a time; no fork meanwhile
  if (g_os_stats.meshed_pages.load(std::memory_order_relaxed) >= kMaxMeshed) return false;
  // Writers to b wait from here until b's addresses show a's memory; a
  // signal handler of this thread must not be one of them.
  SignalMask mask;
  os_block_signals(&mask);
  if (!filemap_hold(area_b, n)) {
    os_restore_signals(&mask);
    return false;
  }
  if (!a->meshed) freeze_primary(h, a, a_live);
  detach(h, b);
  b->mesh_primary = a;
  b->mesh_next = a->mesh_next;
  a->mesh_next = b;
  group_add(a, b_live);
  drop_late_frees(b, b->xthread_free.exchange(kXMesh, std::memory_order_seq_cst), a);
  // Copy what is live (a block freed meanwhile is copied too: harmless).
  const uint64_t* bits = live_bits(b);
  const size_t bs = b->block_size;
  for (unsigned w = 0; w < bit_words(b); w++)
    for (uint64_t m = bits[w]; m; m &= m - 1) {
      size_t off = (size_t{w} * 64 + static_cast<unsigned>(__builtin_ctzll(m))) * bs;
      memcpy(area_a + off, area_b + off, bs);
    }
  if (!filemap_point(area_b, area_a, n)) die("cannot remap the page at", area_b);
  filemap_punch(area_b, n);
  filemap_unhold();
  os_restore_signals(&mask);
  stats_add(g_os_stats.meshed_pages, 1);
  stats_add(g_os_stats.mesh_merges, 1);
  return true;
}

// Returns to the OS the OS pages of a group's memory that hold no byte of
// a live block of the group (its pages take no new blocks, so nothing
// writes there again). Under g_lock.
void punch_dead(Page* a, const uint64_t* live) {
  Segment* s = segment_of_page(a);
  uint8_t* area = page_area(s, a);
  const size_t n = page_area_size(s), bs = a->block_size;
  auto any_live = [&](size_t lo, size_t hi) {  // blocks [lo, hi]
    if (hi >= a->reserved) hi = a->reserved - 1;
    for (size_t i = lo; i <= hi && i < a->reserved; i++)
      if (live[i / 64] >> (i % 64) & 1) return true;
    return false;
  };
  size_t run = 0;  // start of the current run of dead OS pages
  bool in_run = false;
  for (size_t off = 0; off <= n; off += kOsPage) {
    bool dead = off < n && !any_live(off / bs, (off + kOsPage - 1) / bs);
    if (dead && !in_run) run = off, in_run = true;
    if (!dead && in_run) {
      filemap_punch(area + run, off - run);
      stats_add(g_os_stats.purged_bytes, off - run);
      in_run = false;
    }
  }
}

// How many OS pages of a page's memory hold no live block.
size_t dead_os_pages(const Page* a, const uint64_t* live) {
  const size_t n = page_area_size(segment_of_page(a)), bs = a->block_size;
  size_t dead = 0;
  for (size_t off = 0; off < n; off += kOsPage) {
    size_t lo = off / bs, hi = (off + kOsPage - 1) / bs;
    bool any = false;
    for (size_t i = lo; i <= hi && i < a->reserved && !any; i++) any = live[i / 64] >> (i % 64) & 1;
    dead += !any;
  }
  return dead;
}

// The last block of a group was freed: every page goes back to its
// segment, pointed at its own (empty) memory again.
void release_group_locked(Page* a) {
  uint64_t now = os_now_ms();
  for (Page* pg = a; pg;) {
    Page* next = pg->mesh_next;
    Segment* s = segment_of_page(pg);
    uint8_t* area = page_area(s, pg);
    if (pg != a && !filemap_point(area, area, page_area_size(s)))
      die("cannot remap the page at", area);
    pg->meshed = 0;
    pg->mesh_primary = pg->mesh_next = nullptr;
    pg->xthread_free.store(0, std::memory_order_relaxed);
    stats_sub(g_os_stats.meshed_pages, 1);
    segment_page_free_purged_locked(pg, now);
    pg = next;
  }
}

struct Group {
  Page* primary;
  unsigned live;     // the primary's live blocks when the group opened
  unsigned fill;     // live blocks of the whole group then
  unsigned members;  // pages merged into it
  uint64_t bits[kBitWords];
};

// The pass is done with a group: its dead OS pages go back, and the
// pass's reference is dropped. A page that met no partner is made a group
// of its own when a quarter of its memory or more holds no live block.
void close_group(Heap* h, Group& gr) {
  LockGuard g;
  if (!gr.members) {
    size_t os_pages = page_area_size(segment_of_page(gr.primary)) / kOsPage;
    if (dead_os_pages(gr.primary, gr.bits) * 4 < os_pages ||
        g_os_stats.meshed_pages.load(std::memory_order_relaxed) >= kMaxMeshed)
      return;
    freeze_primary(h, gr.primary, gr.live);
  }
  punch_dead(gr.primary, gr.bits);
  if ((group_add(gr.primary, -1) >> kMeshShift) == 0) release_group_locked(gr.primary);
}

}  // namespace

AM_APPROXIMATE_READS uint32_t mesh_live_blocks(Page* pg) {
  const uint64_t* bits = live_bits(pg);
  uint32_t n = 0;
  for (unsigned w = 0; w < bit_words(pg); w++)
    n += static_cast<uint32_t>(__builtin_popcountll(__atomic_load_n(&bits[w], __ATOMIC_RELAXED)));
  return n;
}

void mesh_free(Page* pg, void* p) {
  Page* a = pg->mesh_primary;
  uint32_t i = block_index(pg, p);
  uint64_t bit = uint64_t{1} << (i % 64);
  uint64_t old = __atomic_fetch_and(&live_bits(pg)[i / 64], ~bit, __ATOMIC_SEQ_CST);
  if (!(old & bit)) return bad_pointer("free", p);
  if ((group_add(a, -1) >> kMeshShift) == 0) {
    LockGuard g;
    release_group_locked(a);
  }
}

void mesh_heap(Heap* h, uint64_t now) {
  h->last_mesh_ms = now;
  const uint64_t before = g_os_stats.meshed_pages.load(std::memory_order_relaxed);
  unsigned merges = 0, examined = 0;
  // A budget of pages looked at per pass (each costs a walk of its free
  // list); the next pass starts with the class this one stopped in.
  unsigned c = h->mesh_next_class % kNumClasses;
  for (unsigned k = 0;
       k < kNumClasses && merges < kMaxMergesPerPass && examined < kMaxExaminedPerPass;
       k++, c = (c + 1) % kNumClasses) {
    h->mesh_next_class = static_cast<uint8_t>(c);
    // Cheap first look: at least two candidates in this queue.
    unsigned candidates = 0;
    for (Page* pg = h->queues[c].first; pg && candidates < 2; pg = pg->next)
      if (!pg->is_head && pg->used * 2 <= pg->reserved) candidates++;
    if (candidates < 2) continue;
    Group groups[kOpenGroups];
    unsigned open = 0;
    for (Page* pg = h->queues[c].first;
         pg && merges < kMaxMergesPerPass && examined < kMaxExaminedPerPass;) {
      Page* next = pg->next;
      page_collect(pg);
      if (pg->is_head || pg->used == 0 || pg->used * 2 > pg->reserved ||
          !segment_of_page(pg)->file_backed) {
        pg = next;
        continue;
      }
      uint64_t* bits = live_bits(pg);
      unsigned live = compute_live(pg, bits);
      examined++;
      const unsigned words = bit_words(pg);
      bool merged = false;
      for (unsigned g = 0; g < open && !merged; g++) {
        Group& gr = groups[g];
        if (!disjoint(gr.bits, bits, words)) continue;
        if (!merge(h, gr.primary, gr.live, pg, live)) {
          merges = kMaxMergesPerPass;  // cannot hold pages: no meshing now
          break;
        }
        for (unsigned w = 0; w < words; w++) gr.bits[w] |= bits[w];
        gr.fill += live;
        gr.members++;
        merges++;
        merged = true;
      }
      if (!merged && merges < kMaxMergesPerPass) {
        // Open a group with this page, closing the fullest if need be.
        unsigned slot = open;
        if (open == kOpenGroups) {
          slot = 0;
          for (unsigned g = 1; g < open; g++)
            if (groups[g].fill > groups[slot].fill) slot = g;
          close_group(h, groups[slot]);
        } else {
          open++;
        }
        Group& gr = groups[slot];
        gr.primary = pg;
        gr.live = gr.fill = live;
        gr.members = 0;
        memcpy(gr.bits, bits, words * sizeof(uint64_t));
      }
      pg = next;
    }
    for (unsigned g = 0; g < open; g++) close_group(h, groups[g]);
  }
  // Back off only from passes that looked at pages in vain (a pass with
  // no candidates costs a walk of the queues).
  bool did = merges || g_os_stats.meshed_pages.load(std::memory_order_relaxed) > before;
  uint32_t wait = did || !examined ? kMeshEveryMs : 2 * h->mesh_every_ms;
  h->mesh_every_ms = wait < kMeshEveryMs     ? kMeshEveryMs
                     : wait > kMeshMaxWaitMs ? kMeshMaxWaitMs
                                             : wait;
}

}  // namespace am
