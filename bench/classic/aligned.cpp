// am_wl_aligned: aligned allocations.
//
// Every thread keeps 2048 slots and repeatedly replaces a random one with a
// block of 8..4096 bytes aligned to 16..4096 (a power of two, uniform over
// the exponents), from posix_memalign or aligned_alloc (size rounded up to a
// multiple of the alignment, as C11 asks) in turn. One op in 4096 instead
// asks posix_memalign for 2..4 MiB aligned to 2 MiB (a huge-page-aligned
// buffer).
//
// Checksum: every block's alignment is checked when it arrives, and its
// pattern (from its tag) before it is freed; the checksum of the tags
// allocated must equal that of the tags verified.
//
// Metrics: ops_per_s (primary; one op = one free + one aligned allocation),
// time_s, peak_rss_kib, rss_per_live ((RSS - RSS at start) / requested live
// bytes at the end, before the final frees).
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../wl_common.h"

namespace {

constexpr unsigned kSlots = 2048;

struct Block {
  void* p = nullptr;
  size_t n = 0;
  uint64_t tag = 0;
};

// Allocates b per op i; false if the block is misaligned (or none came).
bool allocate(Block& b, uint64_t i, wl_rng& rng) {
  size_t align, n;
  bool huge = rng.below(4096) == 0;
  if (huge) {
    align = size_t(2) << 20;
    n = align + rng.below(uint32_t(align));
  } else {
    align = size_t(16) << rng.below(9);  // 16 .. 4096
    n = 8 + rng.below(4089);
  }
  void* p = nullptr;
  if (huge || (i & 1) == 0) {
    if (posix_memalign(&p, align, n) != 0) p = nullptr;
  } else {
    n = (n + align - 1) & ~(align - 1);
    p = aligned_alloc(align, n);
  }
  b.p = p;
  b.n = n;
  if (p == nullptr) return false;
  wl_fill(p, n, b.tag);
  return (reinterpret_cast<uintptr_t>(p) & (align - 1)) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  WlArgs args = wl_parse(argc, argv, "aligned");
  wl_arm_hard_cap(args);
  const unsigned T = args.threads;
  const uint64_t ops = wl_pick<uint64_t>(args, 20000, 600000, 2500000);
  const double cap = wl_soft_cap_s(args);
  std::vector<WlChecksum> made(T), freed(T);
  std::vector<uint64_t> bad(T, 0), misaligned(T, 0), done(T, 0), live(T, 0), live_at_end(T, 0);
  std::atomic<bool> capped{false};
  std::atomic<unsigned> at_end{0};
  std::atomic<bool> measured{false};
  size_t end_rss = 0;

  const size_t rss0 = rss_kib();
  const double t0 = wl_now_s();
  double secs = 0;
  wl_run_threads(T, [&](unsigned t) {
    wl_rng rng(args.seed * 13 + t);
    std::vector<Block> slots(kSlots);
    auto release = [&](Block& b) {
      if (b.p == nullptr) return;
      if (wl_verify(b.p, b.n, b.tag))
        freed[t].add(b.tag ^ b.n);
      else
        ++bad[t];
      std::free(b.p);
      live[t] -= b.n;
      b.p = nullptr;
    };
    for (uint64_t i = 0; i < ops + kSlots; ++i) {
      if ((i & 1023) == 0 && wl_now_s() - t0 > cap) {
        capped.store(true);
        break;
      }
      Block& b = slots[i < kSlots ? i : rng.below(kSlots)];
      release(b);
      b.tag = (uint64_t(t) << 40) | i;
      if (!allocate(b, i, rng)) {
        ++misaligned[t];
        if (b.p == nullptr) continue;
      }
      made[t].add(b.tag ^ b.n);
      live[t] += b.n;
      if (i >= kSlots) ++done[t];
    }
    // The last thread to finish reads RSS while every thread's blocks live.
    live_at_end[t] = live[t];
    if (at_end.fetch_add(1) + 1 == T) {
      secs = wl_now_s() - t0;
      end_rss = rss_kib();
      measured.store(true);
    }
    while (!measured.load()) std::this_thread::yield();
    for (auto& b : slots) release(b);
  });

  WlChecksum m, f;
  uint64_t nbad = 0, nmis = 0, nops = 0;
  double live_bytes = 0;
  for (auto x : live_at_end) live_bytes += double(x);
  for (unsigned t = 0; t < T; ++t) {
    m.merge(made[t]);
    f.merge(freed[t]);
    nbad += bad[t];
    nmis += misaligned[t];
    nops += done[t];
  }

  WlResult r = wl_result("aligned", args.size, T, "ops_per_s", "higher");
  r.metric("ops_per_s", double(nops) / secs);
  r.metric("time_s", secs);
  r.metric("peak_rss_kib", double(peak_rss_kib()));
  r.metric("rss_per_live", (double(end_rss) - double(rss0)) * 1024 / live_bytes);
  r.metric("misaligned", double(nmis));
  r.metric("capped", capped ? 1 : 0);
  r.checksum = wl_hex(f);
  r.checksum_ok = nbad == 0 && nmis == 0 && m == f;
  if (nmis)
    std::fprintf(stderr, "aligned: %llu blocks misaligned or not allocated\n",
                 (unsigned long long)nmis);
  if (nbad) std::fprintf(stderr, "aligned: %llu blocks damaged\n", (unsigned long long)nbad);
  return wl_finish(r);
}
