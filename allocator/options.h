// AMALLOC_* options, read from the environment without allocating.
#pragma once
#include <cstdint>

namespace am {

enum StatsMode : uint8_t { kStatsOff = 0, kStatsText = 1, kStatsJson = 2 };
enum BadFreeMode : uint8_t { kBadFreeAbort = 0, kBadFreeReport = 1 };

struct Options {
  // AMALLOC_STATS=0|1|json
  uint8_t stats = kStatsOff;
  // AMALLOC_BAD_FREE=abort|report
  uint8_t bad_free = kBadFreeAbort;
  // AMALLOC_VERBOSE=1: print the options at start
  uint8_t verbose = 0;
  // AMALLOC_BACKGROUND=0: no worker thread
  uint8_t background = 1;
  // AMALLOC_PREDICT=1: the worker builds pages ahead of bursts (off by
  // default: it costs a few MiB in loops that keep taking cold pages)
  uint8_t predict = 0;
  // AMALLOC_MESH=1: small and medium pages live in a memory file, and
  // sparse pages of one class whose live blocks do not overlap are merged
  // onto one physical page (allocator/mesh.cpp)
  uint8_t mesh = 0;
  // AMALLOC_TRIM=0: sparse pages keep the free OS pages inside their free
  // blocks (allocator/trim.cpp)
  uint8_t trim = 1;
  // AMALLOC_PURGE=free: purge with MADV_FREE (the kernel takes the pages
  // when it needs them; RSS does not fall until then) instead of MADV_DONTNEED
  uint8_t purge_free = 0;
  // AMALLOC_PURGE_DELAY=ms: the half-life of free resident memory (0: purge at once)
  uint32_t purge_delay_ms = 100;
  // AMALLOC_EPOCH_WARN_MS=ms: name a thread pinned this long (0: never)
  uint32_t epoch_warn_ms = 1000;
  // AMALLOC_EPOCH_MEMBARRIER=0: a full fence on every pin instead of
  // membarrier(2) on the reclaiming side (what happens anyway where the
  // kernel or a seccomp filter refuses membarrier)
  uint8_t epoch_membarrier = 1;
  // AMALLOC_SEGMENT_CACHE=n: empty 4 MiB segments kept mapped (purged)
  uint32_t segment_cache = 64;
};

extern Options g_options;

// Reads the environment; false when there is none yet (very early calls).
bool options_init();

}  // namespace am
