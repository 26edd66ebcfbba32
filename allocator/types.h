// The engine's plain data: blocks, pages, segments and heaps.
#pragma once
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "allocator/config.h"
#include "allocator/size_classes.h"

namespace am {

struct Heap;
struct Segment;

struct Block {
  Block* next;
};

enum PageKind : uint8_t { kKindNone = 0, kKindSmall = 1, kKindMedium = 2, kKindLarge = 3 };

// A page holds blocks of one size class. The owner allocates from `free`
// and frees onto it without atomics; other threads push onto
// `xthread_free`, which the owner collects on its slow path.

// Low bit of Page::xthread_free: the page is on its owner's full list. A
// remote freer learns it from its own push, so it never reads the page
// after the push, when the owner may already have freed the page.
constexpr uintptr_t kXFull = 1;
// Bit 1 of Page::xthread_free: the page is meshed (allocator/mesh.cpp). Its
// blocks are not linked any more (their memory is shared with other pages'
// live blocks); a free clears the block's bit in the page's live bitmap and
// counts down its group's live blocks, kept in the group's first page's
// word above kMeshShift.
constexpr uintptr_t kXMesh = 2;
constexpr unsigned kMeshShift = 4;
// Bits 48 and up of an unmeshed page's xthread_free: how many blocks its
// list holds. The owner then takes the list without walking it: a walk is
// a chain of dependent misses on lines the freeing cores wrote, where a
// pop from the taken list overlaps its miss with the caller's work.
constexpr unsigned kXCountShift = 48;
constexpr uintptr_t kXCountOne = uintptr_t{1} << kXCountShift;
static_assert(kAddressBits < kXCountShift, "block addresses must stay below the count");
static_assert(8 * kSlotSize / 16 < (uintptr_t{1} << (64 - kXCountShift)),
              "a medium page's blocks must fit in the count");
inline Block* xlist(uintptr_t v) {
  return reinterpret_cast<Block*>(v & (kXCountOne - 1) & ~(kXFull | kXMesh));
}
inline uint32_t xcount(uintptr_t v) { return static_cast<uint32_t>(v >> kXCountShift); }
// The fields are grouped by who writes them, a cache line each, so that a
// producer's allocations and a consumer's frees of the same page never
// take a line from each other: the owner's fast paths write line 0 only,
// other threads' frees read line 1 and write line 2 only.
struct Page {
  // -- line 0: written by the owner's fast paths --
  Block* free;
  // Blocks handed out and not back on `free`, plus one while the page is
  // its queue's head: the head never reaches 0 on the fast path, so a
  // malloc/free ping-pong on it never leaves the fast path.
  uint32_t used;
  uint32_t capacity;  // blocks carved so far
  // -- line 1: read by every free; written when the page changes hands --
  // The owning heap while a thread whose current heap it is may free
  // straight onto `free`; nullptr while the page is full, abandoned, large
  // or unused, which sends every free of it to the slow path with one
  // compare. (Binding a heap to another thread changes no page.)
  alignas(64) std::atomic<Heap*> owner_fast;
  uint8_t* start;  // first block
  // ceil(2^64 / block_size): `(p - start) * divc < divc` iff p is a block
  // start (Lemire's divisibility test), the interior-pointer check on free.
  uint64_t divc;
  size_t block_size;        // bytes (page-rounded for a large block)
  std::atomic<Heap*> heap;  // owner; nullptr when abandoned or large
  uint32_t reserved;        // blocks that fit in the page
  uint8_t cls;
  uint8_t kind;
  uint8_t in_use;
  uint8_t span_off;  // slots back to the page's first slot (medium pages)
  // -- line 2: other threads' frees --
  alignas(64) std::atomic<uintptr_t> xthread_free;  // Block* | kXFull | count
  // -- line 3: cold --
  alignas(64) Page* next;  // in a heap queue, the heap's full list, or the abandoned list
  Page* prev;
  uint64_t retired_at;  // ms, when the slot became free (for purging)
  // A meshed page's group: the page whose memory the group shares (it
  // keeps the group's count), and the next page of the group. A large
  // block's page (never meshed) keeps its heap instead, and its links in
  // that heap's list are `next` and `prev` (g_lock).
  union {
    Page* mesh_primary;
    Heap* large_owner;
  };
  Page* mesh_next;
  uint16_t trim_used;  // `used` when trim.cpp last trimmed the page; 0: never
  union {
    uint16_t trim_seen;  // the page's state at the last trim pass (trim.cpp)
    // A span block whose last slot was resident when it was placed: what
    // lies past its end may be too (kTailResident), and a pass found it so
    // (kTailSeen); trim.cpp gives it back once the block outlives a pass.
    uint16_t tail_state;
  };
  uint8_t is_head;  // first page of its heap queue (holds the used bias)
  uint8_t in_full;  // on the owner's full list (the owner's copy of kXFull)
  uint8_t dirty;    // free slot whose memory may still be resident
  uint8_t meshed;   // shares its memory with other pages (mesh.cpp)
  // Free blocks that trim.cpp gave back to the OS and took off `free`
  // (marked in Segment::trimmed); linked again when `free` runs dry.
  uint8_t trimmed;
  uint8_t slots;  // a span's page slots (kSegSpan); 0 otherwise
};

static_assert(sizeof(Page) == 256, "slot_page() computes slot * 256");

// kSegSpan: large blocks up to kSpanMax, each on a run of page slots
// (a span) whose first slot's Page describes it; the others point back.
enum SegmentKind : uint8_t { kSegSmall = 1, kSegMedium = 2, kSegLarge = 3, kSegSpan = 4 };

// A 4 MiB aligned region of 64 slots of 64 KiB. The page table comes first,
// so the Page of slot i is at `segment + i * sizeof(Page)`: free() finds it
// with a mask and a shift whatever the page size. Slot 0 holds this header
// and never blocks, so a block never lies before its page's start.
// A medium page spans 8 slots; its first slot's Page is the page, the
// others point back to it (span_off) and send frees to the slow path.
struct Segment {
  Page pages[kMaxPages];
  // Per page slot, the blocks trim.cpp gave back (bit i: block i), owned by
  // the page's owner; in the OS page the fields below use. (Before them: a
  // large segment taken again clears only its fields.)
  uint64_t trimmed[kMaxPages][2];
  uint8_t kind;
  uint8_t in_partial;  // on the partial list of its kind
  uint8_t purged;      // in the cache and already returned to the OS
  // Page slots are a shared mapping of the memory file at an offset equal
  // to their address (AMALLOC_MESH, allocator/filemap.cpp).
  uint8_t file_backed;
  // Taken from the cache with AMALLOC_PURGE=free: pages purged since may
  // still hold old bytes, so a large calloc zeroes all it hands out.
  uint8_t lazy;
  uint32_t used_pages;
  // A span segment's free slots and slots that may be resident (bit i:
  // slot i), the Pages' in_use and dirty in one word each for the search.
  uint64_t span_free;
  uint64_t span_dirty;
  // Free slots purged with MADV_FREE (AMALLOC_PURGE=free): not resident as
  // far as RSS goes, but they may still read as their old bytes.
  uint64_t span_lazy;
  size_t mapped_size;  // bytes mapped at this address
  Segment* next;       // partial list or segment cache
  Segment* prev;
  Segment* all_next;  // every live segment, for stats and purging
  Segment* all_prev;
  uint64_t cached_at;
  size_t dirty_end;  // bytes from the start that may be resident
};

static_assert(sizeof(Segment) <= kLargeOffset);

struct PageQueue {
  Page* first;
  Page* last;
};

// A heap is used by one thread at a time: a thread's default heap, or a
// heap made with am_heap_new and bound to a thread. Its direct table points
// at the current page of each small class, so the fast path is
// size -> slot -> page -> pop.
struct Heap {
  std::array<Page*, kDirectSlots> direct;
  PageQueue queues[kNumClasses] = {};
  Page* full = nullptr;  // pages with no free block, doubly linked
  // The two hints other threads read on every free of one of our blocks,
  // on a line of their own: the owner's lock and counters next to them
  // took the line away from the freeing cores at each of its slow paths.
  // Set by another thread that freed into one of our full pages.
  alignas(64) std::atomic<uint8_t> full_remote_hint{0};
  // Set (to 1) by other threads after they free into one of our pages, so
  // that the idle point knows there is something to collect; 2 once a
  // sweep has looked at the pages and left the rest to the owner.
  std::atomic<uint8_t> remote_hint{0};
  // The owner's slow paths hold it (heap_lock): it guards the queues, the
  // full list, and every page's free list and counts outside the fast
  // paths, against the worker's sweeps (sweep.cpp), which collect the
  // remote frees of an owner that has stopped collecting them itself.
  alignas(64) std::atomic<uint8_t> lock{0};
  // The sweeps' own notes (under g_lock): the full-page hint was set at
  // the last sweep; when a sweep last saw remote_hint set (ms, 0: not
  // seen), with `locks` at `locks_seen`; and where the next sweep of queued
  // pages starts (a class, and pages of it to pass over).
  uint8_t sweep_seen = 0;
  uint8_t sweep_class = 0;
  uint32_t locks_seen = 0;
  uint32_t sweep_skip = 0;
  uint64_t idle_noted_ms = 0;
  uint32_t locks = 0;      // times the owner took `lock` (under it)
  uint8_t live = 0;        // in use (not in the heap pool)
  uint8_t is_default = 0;  // a thread's default heap (else made by am_heap_new)
  // pthread_self() of the thread that has this (non-default) heap bound.
  std::atomic<uintptr_t> bound_thread{0};
  // Debug builds: pthread_self() of the thread inside an am_heap_* call on
  // this heap (heap_api.cpp).
  std::atomic<uintptr_t> debug_user{0};
  Page* large = nullptr;  // large blocks' pages of this heap (under g_lock)
  uint64_t last_collect_ms = 0;
  uint64_t last_mesh_ms = 0;    // the last mesh pass over this heap (mesh.cpp)
  uint32_t mesh_every_ms = 0;   // and the wait before the next (backs off)
  uint8_t mesh_next_class = 0;  // where the next pass starts
  uint8_t trim_next_class = 0;  // the same for trimming (trim.cpp)
  uint32_t trim_every_us = 0;
  uint64_t last_trim_us = 0;
  uint64_t trim_gate_ms = 0;  // no pass due before (os_now_ms; trim.cpp)
  Heap* next = nullptr;       // all heaps ever made / the pool of unused heaps
  Heap* pool_next = nullptr;
  // Counters kept by the owner without atomics; summed by stats.
  uint64_t remote_frees = 0;
  uint64_t pages_adopted = 0;
  // Demand prediction (predict.cpp). The owner counts the pages it needs
  // (load + store: only it writes); the worker keeps pre-built pages ready
  // on `ready`, which the owner takes whole (exchange) when it needs a page.
  std::atomic<uint32_t> new_pages[kNumClasses] = {};
  std::atomic<Page*> ready[kNumClasses] = {};
  std::atomic<uint32_t> ready_count[kNumClasses] = {};
  uint32_t seen_pages[kNumClasses] = {};      // the worker's last look at new_pages
  uint16_t quiet_ticks[kNumClasses] = {};     // worker ticks without demand
  uint16_t peak_rate[kNumClasses] = {};       // most pages needed in one tick, slowly forgotten
  uint64_t last_demand_ms[kNumClasses] = {};  // the worker's last tick with demand
};

}  // namespace am
