// Blocks above kMediumMax. Up to kSpanMax they share kSegSpan segments, a
// run of page slots each, and grow in place while the slots that follow
// are free; larger ones own a segment (4 MiB, or a huge mapping), grow in
// place inside it and by mremap beyond it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "allocator/types.h"

namespace am {

// A block of `size` bytes for heap `h` (which frees it on heap_destroy).
void* large_alloc(Heap* h, size_t size, size_t align, bool zero);
// False, and nothing done, when the block is not live any more (a double
// free that raced the first).
bool large_free(Page* pg);
void large_free_locked(Page* pg, uint64_t now);
// Resize in place or by moving the mapping; nullptr if the caller must
// allocate, copy and free (the old block is untouched then).
void* large_resize(Page* pg, size_t size);

}  // namespace am
