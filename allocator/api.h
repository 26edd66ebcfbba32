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
int alloc_posix_memalign(void** out, size_t align, size_t size);
void* alloc_pvalloc(size_t size);

}  // namespace am
