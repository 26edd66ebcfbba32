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
// The memory file of AMALLOC_MESH (allocator/filemap.cpp): an anonymous
// file (memfd) of 2^47 sparse bytes, so that any address can be its own
// offset. -1 on failure.
int os_file_create();
void os_file_close(int fd);
// The inode of an open descriptor (0 if it is not open): tells a memory
// file we made from a file the application opened on a reused number.
uint64_t os_file_id(int fd);
// Map `size` bytes of `fd` at offset `off` over [p, p + size), shared and
// read-write. False on failure.
bool os_map_file(void* p, size_t size, int fd, uint64_t off);
// Free the file's pages of a range (a hole that reads as zeros).
void os_file_punch(int fd, uint64_t off, size_t size);
// Purge a shared file mapping: MADV_REMOVE frees the file's pages too.
void os_purge_file(void* p, size_t size);
// Copy the data (not the holes) of [off, off + size) of `from` to the same
// offsets of `to`, reading them through the mapping at `p`. False when the
// kernel refuses (out of memory).
bool os_file_copy(int to, int from, const void* p, uint64_t off, size_t size);
bool os_protect(void* p, size_t size, bool writable);
// SIGSEGV: install `handler` (keeping the disposition it replaces), tell
// whether it is still the one installed, read a fault's address, and pass
// a fault on to the replaced disposition (the default one kills as the
// fault would have, when the faulting access is retried).
using FaultHandler = void (*)(int sig, void* info, void* context);
bool os_fault_handler_install(FaultHandler handler);
bool os_fault_handler_is(FaultHandler handler);
uintptr_t os_fault_address(void* info);
// The kernel raised it for an access (not kill(2), raise(3) or sigqueue).
bool os_fault_is_access(void* info);
void os_fault_chain(int sig, void* info, void* context);
// Block every asynchronous signal (the calling thread's handlers will not
// run), keeping the old mask.
struct SignalMask {
  alignas(8) unsigned char raw[128];
};
void os_block_signals(SignalMask* old);
void os_restore_signals(const SignalMask* old);
// glibc's lock of the list of FILEs (fork takes it after the prepare
// handlers; its child side resets it).
void os_stdio_list_lock();
void os_stdio_list_unlock();
void os_stdio_list_reset();
int os_getpid();
uint64_t os_now_ms();                // coarse: a tick of the kernel clock
uint64_t os_now_us();                // precise (vDSO), for rates finer than a tick
uint64_t os_coarse_resolution_ms();  // how far os_now_ms() may lag (>= 1)
// membarrier(2), private expedited: registers the process; false where the
// kernel lacks it (the caller then uses fences on both sides).
bool os_membarrier_register();
// A full memory barrier on every running thread of the process.
bool os_membarrier();  // false if the kernel refused it
int os_gettid();
// The name of thread `tid` of this process (pthread_setname_np; its
// command by default), into out[16]; empty if /proc cannot say.
void os_thread_name(int tid, char* out);
// Give up the CPU: a yield for short waits, a sleep for long ones.
void os_yield();
// Sleep while *word == expected, at most timeout_ms; wake such sleepers.
void os_futex_wait(std::atomic<uint32_t>* word, uint32_t expected, uint32_t timeout_ms);
void os_futex_wake(std::atomic<uint32_t>* word, int count = 1);
void os_sleep_us(uint32_t us);
void os_write(int fd, const char* s, size_t n);

}  // namespace am
