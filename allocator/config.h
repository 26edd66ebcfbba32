// Geometry of the engine: segments, pages and the size-class limits.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__GNUC__)
#define AM_LIKELY(x) __builtin_expect(!!(x), 1)
#define AM_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define AM_INLINE inline __attribute__((always_inline))
#define AM_NOINLINE __attribute__((noinline))
#define AM_COLD __attribute__((cold, noinline))
// Statistics read counters that their owners update without atomics: the
// figures are approximate by design, and the reads are not data the
// allocator acts on. Keep ThreadSanitizer from reporting them.
#define AM_APPROXIMATE_READS __attribute__((no_sanitize("thread")))
#endif

// Built with ThreadSanitizer (GCC says so with a macro, clang with a feature).
#if defined(__SANITIZE_THREAD__)
#define AM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AM_TSAN 1
#endif
#endif

// A spin-wait hint for locks held a few microseconds at most.
#if defined(__x86_64__) || defined(__i386__)
#define AM_CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define AM_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define AM_CPU_RELAX() ((void)0)
#endif

namespace am {

// Segments are 4 MiB and 4 MiB aligned: the segment of any block is
// `p & ~kSegmentMask`, and the page is an index into its header.
constexpr unsigned kSegmentShift = 22;
constexpr size_t kSegmentSize = size_t{1} << kSegmentShift;
constexpr uintptr_t kSegmentMask = kSegmentSize - 1;

// A segment is 64 slots of 64 KiB. Small pages (one slot) hold classes up
// to 8 KiB; medium pages (8 slots, 512 KiB) classes up to 64 KiB: at least
// 8 blocks a page either way.
constexpr unsigned kSlotShift = 16;
constexpr size_t kSlotSize = size_t{1} << kSlotShift;
constexpr unsigned kMediumSpan = 8;
constexpr size_t kSmallMax = 8 * 1024;
constexpr size_t kMediumMax = 64 * 1024;
constexpr unsigned kMaxPages = kSegmentSize >> kSlotShift;  // 64

// A large block sits this far into its own segment (past the header).
constexpr size_t kLargeOffset = 64 * 1024;
// Large blocks up to this size share segments, a run of page slots each
// (a span); larger ones own a segment, where they grow in place.
constexpr size_t kSpanMax = 1024 * 1024;
constexpr size_t kOsPage = 4096;

// Blocks of up to this size are served through the heap's direct table.
constexpr size_t kDirectMax = 1024;
constexpr size_t kDirectSlots = kDirectMax / 16 + 1;

// The segment map covers the 47-bit user address space, one byte a segment.
constexpr unsigned kAddressBits = 47;
constexpr size_t kSegmapSize = size_t{1} << (kAddressBits - kSegmentShift);

// Largest request we try to satisfy (as glibc: PTRDIFF_MAX minus slack).
constexpr size_t kMaxRequest = (size_t{1} << 62);

// A page is extended by at most this many bytes of new blocks at a time, so
// a fresh page is not touched all at once.
constexpr size_t kExtendBytes = 4096;

}  // namespace am
