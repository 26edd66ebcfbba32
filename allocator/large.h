// Blocks above kMediumMax: each owns a segment (4 MiB, or a huge mapping),
// grows in place inside it and by mremap beyond it.
#pragma once
#include <cstddef>

#include "allocator/types.h"

namespace am {

// A block of `size` bytes for heap `h` (which frees it on heap_destroy).
void* large_alloc(Heap* h, size_t size, size_t align, bool zero);
void large_free(Page* pg);
// Resize in place or by moving the mapping; nullptr if the caller must
// allocate, copy and free (the old block is untouched then).
void* large_resize(Page* pg, size_t size);

}  // namespace am
