// The malloc family as the engine implements it, for the entry points in
// preload/ (which add the glibc names and operator new/delete).
#pragma once
#include <cstddef>

namespace am {

void* alloc_aligned(size_t align, size_t size);
void* alloc_calloc(size_t count, size_t size);
void* alloc_realloc(void* p, size_t size);
void* alloc_reallocarray(void* p, size_t count, size_t size);
size_t alloc_usable_size(const void* p);
int alloc_posix_memalign(void** out, size_t align, size_t size);
void* alloc_pvalloc(size_t size);

}  // namespace am
