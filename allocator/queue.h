// A heap's page queues and its full list (the owner's slow paths, shared
// with the worker's sweeps: every function here wants the heap lock held).
#pragma once
#include "allocator/types.h"

namespace am {

// Put a page of the owner's at the back of its class queue / take it out;
// the queue's head (and so the direct table) follows.
void queue_push_back(Heap* h, Page* pg);
void queue_remove(Heap* h, Page* pg);
// Take a page off the full list.
void full_remove(Heap* h, Page* pg);
// A page with nothing left to hand out leaves its queue for the full list,
// unless remote frees arrived meanwhile.
void page_to_full(Heap* h, Page* pg);
// Pages of the full list that received frees go back to their queues.
void unfull_remote(Heap* h);

}  // namespace am
