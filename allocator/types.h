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

struct Block {
  Block* next;
};

enum PageKind : uint8_t { kKindNone = 0, kKindSmall = 1, kKindMedium = 2, kKindLarge = 3 };

// A page holds blocks of one size class. The owner allocates from `free`
// and frees onto it without atomics; other threads push onto
// `xthread_free`, which the owner collects on its slow path.
struct Page {
  // -- read on the owner's fast paths (first cache line) --
  Block* free;
  // The owner heap while the owner may free straight onto `free`; nullptr
  // while the page is full, abandoned, large or unused, which sends every
  // free of it to the slow path with one compare.
  std::atomic<Heap*> owner_fast;
  uint8_t* start;  // first block
  // ceil(2^64 / block_size): `(p - start) * divc < divc` iff p is a block
  // start (Lemire's divisibility test), the interior-pointer check on free.
  uint64_t divc;
  uint32_t used;      // blocks handed out and not freed to `free`
  uint32_t capacity;  // blocks carved so far
  size_t block_size;  // bytes (page-rounded for a large block)
  uint32_t reserved;  // blocks that fit in the page
  std::atomic<Block*> xthread_free;
  std::atomic<Heap*> heap;  // owner; nullptr when abandoned or large
  // -- cold --
  Page* next;  // in a heap queue, the heap's full list, or the abandoned list
  Page* prev;
  uint64_t retired_at;  // ms, when the slot became free (for purging)
  uint8_t cls;
  uint8_t kind;
  uint8_t in_use;
  uint8_t is_head;  // first page of its heap queue (kept when it empties)
  std::atomic<uint8_t> in_full;
  uint8_t dirty;      // free slot whose memory may still be resident
  uint8_t abandoned;  // on the global abandoned list
  uint8_t pad_;
};

enum SegmentKind : uint8_t { kSegSmall = 1, kSegMedium = 2, kSegLarge = 3 };

// A 4 MiB aligned region: this header, then pages. Page 0 holds the header
// (and is never used for blocks), so every block lies at or after its
// page's start and the interior check cannot be fooled by the header.
struct Segment {
  uint8_t kind;
  uint8_t page_shift;
  uint8_t in_partial;  // on the partial list of its kind
  uint8_t fresh;       // untouched since mapped (reads as zero)
  uint32_t page_count;
  uint32_t used_pages;
  size_t mapped_size;  // bytes mapped at this address
  Segment* next;       // partial list or segment cache
  Segment* prev;
  Segment* all_next;  // every live segment, for stats and purging
  Segment* all_prev;
  uint64_t cached_at;
  uint8_t purged;  // in the cache and already returned to the OS
  Page pages[kMaxPages];
};

static_assert(sizeof(Segment) <= kLargeOffset);

struct PageQueue {
  Page* first;
  Page* last;
};

// A heap is owned by one thread at a time (a thread's default heap). Its
// direct table points at the current page of each small class, so the
// fast path is size -> slot -> page -> pop.
struct Heap {
  std::array<Page*, kDirectSlots> direct;
  PageQueue queues[kNumClasses] = {};
  Page* full = nullptr;  // pages with no free block, doubly linked
  // Set by another thread that freed into one of our full pages.
  std::atomic<uint8_t> full_remote_hint{0};
  uint8_t live = 0;  // owned by a thread (not in the heap pool)
  uint32_t slow_calls = 0;
  Heap* next = nullptr;  // all heaps ever made / the pool of unused heaps
  Heap* pool_next = nullptr;
  // Counters kept by the owner without atomics; summed by stats.
  uint64_t remote_frees = 0;
  uint64_t pages_adopted = 0;
};

}  // namespace am
