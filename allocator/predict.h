// Demand-predictive preallocation: pages built and faulted in ahead of a
// heap's need, by the background worker from each heap's recent demand, or
// at once for an application that announces a burst (am_prefill).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "allocator/types.h"

namespace am {

extern std::atomic<uint64_t> g_prefill_built, g_prefill_used, g_prefill_released, g_ready_bytes;

// The owner's side (page_new): a page ready for `cls`, or nullptr.
Page* ready_take(Heap* h, unsigned cls);
// Heap teardown: give the ready pages back. Under g_lock.
void ready_drop_locked(Heap* h, uint64_t now);
// The worker's task (see predict.cpp).
uint64_t predict_tick(uint64_t now);
// Builds `pages` pages of `cls` onto the calling owner's queue; returns how
// many it made.
size_t prefill(Heap* h, unsigned cls, size_t pages);

}  // namespace am
