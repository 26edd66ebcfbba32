// The only place that talks to the kernel: mapping, purging, time, output.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace am {

// Anonymous read-write memory of `size` bytes such that `p + offset` is
// aligned to `align` (a power of two, at least the OS page). nullptr on
// failure; errno untouched.
void* os_map_aligned(size_t size, size_t align, size_t offset = 0);
void os_unmap(void* p, size_t size);
// Give the pages back (contents become zero); the range stays mapped.
void os_purge(void* p, size_t size);
// Grow or shrink a mapping at `p` to `new_size`, keeping it aligned to
// `align`; moves the pages (never copies). nullptr on failure.
void* os_remap_aligned(void* p, size_t old_size, size_t new_size, size_t align);
uint64_t os_now_ms();  // coarse: a tick of the kernel clock
uint64_t os_now_us();  // precise (vDSO), for rates finer than a tick
// membarrier(2), private expedited: registers the process; false where the
// kernel lacks it (the caller then uses fences on both sides).
bool os_membarrier_register();
// A full memory barrier on every running thread of the process.
void os_membarrier();
int os_gettid();
// Give up the CPU: a yield for short waits, a sleep for long ones.
void os_yield();
// Sleep while *word == expected, at most timeout_ms; wake such sleepers.
void os_futex_wait(std::atomic<uint32_t>* word, uint32_t expected, uint32_t timeout_ms);
void os_futex_wake(std::atomic<uint32_t>* word);
void os_sleep_us(uint32_t us);
void os_write(int fd, const char* s, size_t n);

}  // namespace am
