// Counters and the reports (text and JSON), written without malloc.
#include "allocator/stats.h"

#include <unistd.h>

#include "allocator/background.h"
#include "allocator/format.h"
#include "allocator/heap.h"
#include "allocator/lock.h"
#include "allocator/predict.h"
#include "allocator/segment.h"
#include "amalloc/amalloc.h"

namespace am {

OsStats g_os_stats;
ClassCounters g_class_counters[kNumClasses];
int g_report_fd = 2;
namespace {
constexpr int kMaxHooks = 4;
std::atomic<StatsHook> g_hooks[kMaxHooks];

void run_hooks(int fd, bool json) {
  for (auto& h : g_hooks)
    if (StatsHook f = h.load(std::memory_order_acquire)) f(fd, json);
}
bool class_active(const am_class_stats_t& c) {
  return c.pages || c.reserve_pages || c.pages_cold || c.pages_ready || c.pages_reserve;
}

void report_classes(int fd) {
  am_class_stats_t cs[kNumClasses];
  am_class_stats(cs, kNumClasses);
  Out o;
  for (const am_class_stats_t& c : cs) {
    if (!class_active(c)) continue;
    o.str("  class ")
        .num(c.block_size)
        .str(": ")
        .num(c.pages)
        .str(" pages, ")
        .num(c.blocks_live)
        .ch('/')
        .num(c.blocks_carved)
        .str(" blocks live; taken ")
        .num(c.pages_cold)
        .str(" cold, ")
        .num(c.pages_ready)
        .str(" built ahead, ")
        .num(c.pages_reserve)
        .str(" from the reserve");
    if (c.reserve_pages) o.str("; ").num(c.reserve_pages).str(" in the reserve");
    if (c.meshed_pages) o.str("; ").num(c.meshed_pages).str(" meshed");
    if (c.trimmed_bytes) o.str("; ").bytes(c.trimmed_bytes).str(" trimmed");
    o.ch('\n').flush(fd);
  }
}

void report_classes_json(int fd) {
  am_class_stats_t cs[kNumClasses];
  am_class_stats(cs, kNumClasses);
  Out o;
  o.str(",\"classes\":[");
  bool first = true;
  for (const am_class_stats_t& c : cs) {
    if (!class_active(c)) continue;
    auto field = [&o](const char* name, uint64_t v, bool comma = true) {
      if (comma) o.ch(',');
      o.ch('"').str(name).str("\":").num(v);
    };
    o.str(first ? "{" : ",{");
    first = false;
    field("size", c.block_size, false);
    field("pages", c.pages);
    field("blocks_live", c.blocks_live);
    field("blocks_carved", c.blocks_carved);
    field("meshed_pages", c.meshed_pages);
    field("reserve_pages", c.reserve_pages);
    field("pages_cold", c.pages_cold);
    field("pages_ready", c.pages_ready);
    field("pages_reserve", c.pages_reserve);
    field("trimmed_bytes", c.trimmed_bytes);
    o.ch('}').flush(fd);
  }
  o.ch(']').flush(fd);
}

}  // namespace

void stats_add_hook(StatsHook hook) {
  for (auto& h : g_hooks) {
    StatsHook expected = nullptr;
    if (h.compare_exchange_strong(expected, hook, std::memory_order_acq_rel)) return;
  }
}

}  // namespace am

using namespace am;

extern "C" void am_stats_get(am_stats_t* out) {
  SegmentTotals t;
  uint64_t remote, adopted;
  {
    LockGuard g;
    t = segment_totals_locked();
    heap_stats_sum(&remote, &adopted);
  }
  auto rd = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  *out = am_stats_t{};
  out->reserved_bytes = rd(g_os_stats.reserved_bytes);
  out->committed_bytes = t.committed;
  out->in_use_bytes = t.in_use;
  out->segments = t.segments;
  out->pages_in_use = t.pages_in_use;
  out->large_blocks = t.large_blocks;
  out->mmap_calls = rd(g_os_stats.mmap_calls);
  out->munmap_calls = rd(g_os_stats.munmap_calls);
  out->purged_bytes = rd(g_os_stats.purged_bytes);
  out->remote_frees = remote + rd(g_os_stats.remote_frees);
  out->heaps_created = rd(g_os_stats.heaps_created);
  out->heaps_abandoned = rd(g_os_stats.heaps_abandoned);
  out->pages_adopted = adopted;
  out->bad_frees = rd(g_os_stats.bad_frees);
  out->large_allocs = rd(g_os_stats.large_allocs);
  out->remaps = rd(g_os_stats.huge_remaps);
  out->purge_calls = rd(g_os_stats.purge_calls);
  out->trimmed_bytes = rd(g_os_stats.trimmed_bytes);
  out->dirty_bytes = rd(g_dirty_bytes);
  out->background_ticks = background_ticks();
  out->prefill_pages = rd(g_prefill_built);
  out->prefill_used = rd(g_prefill_used);
  out->prefill_released = rd(g_prefill_released);
  out->prefill_ready_bytes = rd(g_ready_bytes);
  out->defrag_moves = rd(g_os_stats.defrag_moves);
  out->swept_pages = rd(g_os_stats.swept_pages);
  out->meshed_pages = rd(g_os_stats.meshed_pages);
  out->mesh_merges = rd(g_os_stats.mesh_merges);
  out->prefill_kept = rd(g_reserve_kept);
}

namespace am {

void stats_report(int fd) {
  am_stats_t s;
  am_stats_get(&s);
  Out o;
  o.str("amalloc ")
      .str(AMALLOC_VERSION_STRING)
      .str(" stats (pid ")
      .num(static_cast<uint64_t>(getpid()))
      .str(")\n");
  o.str("  in use:     ")
      .bytes(s.in_use_bytes)
      .str(" in ")
      .num(s.pages_in_use)
      .str(" pages and ")
      .num(s.large_blocks)
      .str(" large blocks (")
      .num(s.large_allocs)
      .str(" made)\n");
  o.str("  committed:  ")
      .bytes(s.committed_bytes)
      .str(" (reserved ")
      .bytes(s.reserved_bytes)
      .str(" in ")
      .num(s.segments)
      .str(" segments)\n");
  o.str("  os:         ")
      .num(s.mmap_calls)
      .str(" maps, ")
      .num(s.munmap_calls)
      .str(" unmaps, ")
      .num(s.remaps)
      .str(" remaps, ")
      .bytes(s.purged_bytes)
      .str(" purged in ")
      .num(s.purge_calls)
      .str(" calls (")
      .bytes(s.trimmed_bytes)
      .str(" inside sparse pages), ")
      .bytes(s.dirty_bytes)
      .str(" free and resident\n");
  o.str("  worker:     ")
      .num(s.background_ticks)
      .str(" passes; ")
      .num(s.prefill_pages)
      .str(" pages built ahead, ")
      .num(s.prefill_kept)
      .str(" kept after bursts, ")
      .num(s.prefill_used)
      .str(" used, ")
      .num(s.prefill_released)
      .str(" released unused, ")
      .bytes(s.prefill_ready_bytes)
      .str(" ready\n");
  o.str("  threads:    ")
      .num(s.heaps_created)
      .str(" heaps made, ")
      .num(s.heaps_abandoned)
      .str(" abandoned, ")
      .num(s.pages_adopted)
      .str(" pages adopted, ")
      .num(s.swept_pages)
      .str(" pages of idle owners swept\n");
  o.str("  frees:      ")
      .num(s.remote_frees)
      .str(" from other threads, ")
      .num(s.bad_frees)
      .str(" invalid, ")
      .num(s.defrag_moves)
      .str(" blocks moved by am_defrag_move\n");
  if (s.mesh_merges)
    o.str("  mesh:       ")
        .num(s.meshed_pages)
        .str(" pages meshed now, ")
        .num(s.mesh_merges)
        .str(" merges\n");
  o.flush(fd);
  report_classes(fd);
  run_hooks(fd, false);
}

}  // namespace am

namespace am {

void stats_report_json(int fd) {
  am_stats_t s;
  am_stats_get(&s);
  Out o;
  o.str("{\"amalloc\":\"")
      .str(AMALLOC_VERSION_STRING)
      .str("\",\"pid\":")
      .num(static_cast<uint64_t>(getpid()));
  auto field = [&o](const char* name, uint64_t v) { o.str(",\"").str(name).str("\":").num(v); };
  field("in_use_bytes", s.in_use_bytes);
  field("committed_bytes", s.committed_bytes);
  field("reserved_bytes", s.reserved_bytes);
  field("segments", s.segments);
  field("pages_in_use", s.pages_in_use);
  field("large_blocks", s.large_blocks);
  field("mmap_calls", s.mmap_calls);
  field("munmap_calls", s.munmap_calls);
  field("purged_bytes", s.purged_bytes);
  field("remote_frees", s.remote_frees);
  field("heaps_created", s.heaps_created);
  field("heaps_abandoned", s.heaps_abandoned);
  field("pages_adopted", s.pages_adopted);
  field("bad_frees", s.bad_frees);
  field("large_allocs", s.large_allocs);
  field("remaps", s.remaps);
  field("purge_calls", s.purge_calls);
  field("dirty_bytes", s.dirty_bytes);
  field("background_ticks", s.background_ticks);
  field("prefill_pages", s.prefill_pages);
  field("prefill_used", s.prefill_used);
  field("prefill_released", s.prefill_released);
  field("prefill_ready_bytes", s.prefill_ready_bytes);
  field("defrag_moves", s.defrag_moves);
  field("swept_pages", s.swept_pages);
  field("meshed_pages", s.meshed_pages);
  field("mesh_merges", s.mesh_merges);
  field("prefill_kept", s.prefill_kept);
  field("trimmed_bytes", s.trimmed_bytes);
  o.flush(fd);
  report_classes_json(fd);
  run_hooks(fd, true);  // they add their fields
  o.str("}\n").flush(fd);
}

}  // namespace am

extern "C" void am_stats_print(void) { stats_report(2); }
extern "C" void am_stats_print_json(void) { stats_report_json(2); }

extern "C" size_t am_class_stats(am_class_stats_t* out, size_t max) {
  if (!out || max == 0) return kNumClasses;
  ClassTotals t[kNumClasses];
  {
    LockGuard g;
    segment_class_totals_locked(t);
  }
  auto rd = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  for (size_t c = 0; c < max && c < kNumClasses; c++) {
    const ClassCounters& k = g_class_counters[c];
    out[c] = am_class_stats_t{kClassSize[c],      t[c].pages,        t[c].live,
                              t[c].carved,        t[c].meshed,       t[c].reserve,
                              rd(k.pages_cold),   rd(k.pages_ready), rd(k.pages_reserve),
                              rd(k.trimmed_bytes)};
  }
  return kNumClasses;
}
