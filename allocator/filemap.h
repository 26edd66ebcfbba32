// File-backed segments (AMALLOC_MESH): the page slots of small and medium
// segments are a shared mapping of one memory file, each at the file offset
// equal to its address, so that two virtual pages can be pointed at one
// physical page (meshing, allocator/mesh.cpp). Slot 0 (the header and the
// page table) stays private anonymous memory.
#pragma once
#include <cstddef>
#include <cstdint>

#include "allocator/types.h"

namespace am {

// A 4 MiB-aligned segment whose slots 1.. come from the file; nullptr when
// the file or the mapping cannot be made (the caller maps anonymous memory).
Segment* filemap_segment_map();
// Return the file's pages of a segment that is being unmapped.
void filemap_segment_release(Segment* s);
// Purge [p, p + n) of a file-backed segment: the header part with
// MADV_DONTNEED, the slots with MADV_REMOVE (which frees the file's pages).
void filemap_purge(Segment* s, uint8_t* p, size_t n);
// Point [area, area + n) at the memory of [target, target + n), or back at
// its own when target == area. False when the kernel refuses.
bool filemap_point(uint8_t* area, const uint8_t* target, size_t n);
// Free the file's pages of [area, area + n) (its own offsets).
void filemap_punch(const uint8_t* area, size_t n);

// Make [area, area + n) read-only while its contents are copied: a write
// to it (from any thread) faults, and the fault handler waits until
// filemap_unhold, then the write is retried. False when the range cannot
// be held (the handler is not installed, or the application replaced it).
// One range at a time, under g_lock.
bool filemap_hold(uint8_t* area, size_t n);
void filemap_unhold();

// fork(): the child must not share the heap with the parent. Before the
// fork (g_lock held) the slots are made read-only, so that other threads'
// writes wait (the fault handler below), and the data of every page in use
// is copied to a new file. The parent then makes its slots writable and
// goes on; the child maps the copy before any of its code runs. The fork
// takes as long as copying the resident pages; syscalls that write into the
// heap meanwhile (read(2) into a heap buffer) fail with EFAULT.
void filemap_fork_prepare();
void filemap_fork_parent();
void filemap_fork_child();

}  // namespace am
