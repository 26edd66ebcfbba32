// Demand-predictive preallocation: pages built and faulted in ahead of a
// heap's need, by the background worker from each heap's recent demand, or
// at once for an application that announces a burst (am_prefill).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "allocator/types.h"

namespace am {

extern std::atomic<uint64_t> g_prefill_built, g_prefill_used, g_prefill_released, g_ready_bytes,
    g_reserve_kept;  // pages kept whole after a burst (reserve_keep_locked)

// The owner's side (page_new): a page ready for `cls`, or nullptr.
Page* ready_take(Heap* h, unsigned cls);
// Heap teardown: give the ready pages back. Under g_lock.
void ready_drop_locked(Heap* h, uint64_t now);
// A page that emptied (off its owner's lists): kept whole, owned by no
// heap, as the burst reserve (AMALLOC_PREDICT with a worker running), up
// to the bytes the last episode of demand took, so that the next burst
// takes no page fault. False: give it back as usual. Under g_lock.
bool reserve_keep_locked(Page* pg);
// A page of the reserve for `h`'s class `cls` (page_new), or nullptr.
Page* reserve_take_locked(Heap* h, unsigned cls);
// A cold page of `cls` was taken (page_new, with the predictor on).
void predict_count_cold(unsigned cls);
// Give the whole reserve back (am_collect(1), malloc_trim). Under g_lock.
void reserve_drop_locked(uint64_t now);
// The worker's task (see predict.cpp).
uint64_t predict_tick(uint64_t now);
// Builds `pages` pages of `cls` onto the calling owner's queue; returns how
// many it made.
size_t prefill(Heap* h, unsigned cls, size_t pages);

}  // namespace am
