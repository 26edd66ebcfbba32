// The malloc family as the engine implements it, for the entry points in
// preload/ (which add the glibc names and operator new/delete).
#pragma once
#include <cstddef>

namespace am {

struct Heap;

// `h` is the heap to allocate from; nullptr means the calling thread's
// current heap.
void* alloc_aligned(Heap* h, size_t align, size_t size);
void* alloc_calloc(Heap* h, size_t count, size_t size);
void* alloc_realloc(Heap* h, void* p, size_t size);
void* alloc_reallocarray(void* p, size_t count, size_t size);
size_t alloc_usable_size(const void* p);
// The size of the amalloc block that starts at p; 0, quietly, if p is not
// the start of one (an object inside a block, another allocator's
// pointer). Only for memory the caller owns: any other pointer's segment
// may be unmapped under the lookup.
size_t alloc_block_bytes(const void* p);
int alloc_posix_memalign(void** out, size_t align, size_t size);
void* alloc_pvalloc(size_t size);

}  // namespace am
