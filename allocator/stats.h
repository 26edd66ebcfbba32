// Process-wide counters kept by the slow paths (never the fast path).
#pragma once
#include <atomic>
#include <cstdint>

#include "allocator/size_classes.h"

namespace am {

struct OsStats {
  std::atomic<uint64_t> reserved_bytes;
  std::atomic<uint64_t> mmap_calls;
  std::atomic<uint64_t> munmap_calls;
  std::atomic<uint64_t> purged_bytes;
  std::atomic<uint64_t> purge_calls;
  std::atomic<uint64_t> trimmed_bytes;  // of purged_bytes, inside sparse pages (trim.cpp)
  std::atomic<uint64_t> heaps_created;
  std::atomic<uint64_t> heaps_abandoned;
  std::atomic<uint64_t> bad_frees;
  std::atomic<uint64_t> large_allocs;
  std::atomic<uint64_t> huge_remaps;
  std::atomic<uint64_t> remote_frees;  // by threads without a heap
  std::atomic<uint64_t> defrag_moves;  // blocks am_defrag_move moved
  std::atomic<uint64_t> swept_pages;   // idle owners' pages a sweep gave back
  std::atomic<uint64_t> meshed_pages;  // pages in mesh groups now
  std::atomic<uint64_t> mesh_merges;   // pages merged onto another's memory
};

extern OsStats g_os_stats;

// Per size class: where the pages heaps took came from (the predictor's
// hits are pages built ahead or kept in the reserve, its misses fresh
// slots that fault in), and what trimming gave back.
struct ClassCounters {
  std::atomic<uint64_t> pages_cold;
  std::atomic<uint64_t> pages_ready;
  std::atomic<uint64_t> pages_reserve;
  std::atomic<uint64_t> trimmed_bytes;
};
extern ClassCounters g_class_counters[kNumClasses];
// Where reports go: stderr, or a private copy of it made at start-up when
// AMALLOC_STATS is set (programs such as coreutils close fd 2 at exit,
// before the report is written).
extern int g_report_fd;
void stats_report(int fd);
// Layers above the engine (frame pools, epochs) add their lines to reports.
using StatsHook = void (*)(int fd, bool json);
void stats_add_hook(StatsHook hook);
void stats_report_json(int fd);

inline void stats_add(std::atomic<uint64_t>& c, uint64_t n) {
  c.fetch_add(n, std::memory_order_relaxed);
}
inline void stats_sub(std::atomic<uint64_t>& c, uint64_t n) {
  c.fetch_sub(n, std::memory_order_relaxed);
}

}  // namespace am
