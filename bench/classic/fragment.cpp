// am_wl_fragment: fragmentation, single thread.
//
//   1. allocate mixed sizes (70% 16..512 B, 25% 0.5..16 KiB, 5% 16..256 KiB
//      by count) until the live bytes reach the target (tiny 5 MB,
//      quick 150 MB, full 400 MB); every block is written in full;
//   2. free a random 90% of them;
//   3. allocate again, in other sizes (24..3000 B and 20..100 KiB, sizes
//      phase 1 rarely used), half the first target.
//
// RSS is read from /proc/self/statm. An allocator that cannot reuse the holes
// left by phase 2 for phase 3's sizes, or that does not give them back,
// keeps a high RSS per live byte.
//
// Every block is filled with a pattern from its index and verified before
// it is freed (in phase 2 and at the end); the checksum covers them all.
//
// Metrics: rss_per_live (primary, lower is better: (final RSS - RSS at
// start) / live bytes), peak_rss_kib, final_rss_kib, live_kib,
// after_free_rss_kib, time_s.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../wl_common.h"

namespace {

struct Block {
  unsigned char* p;
  size_t n;
  uint64_t tag;
};

size_t first_size(wl_rng& r) {
  uint32_t b = r.below(100);
  if (b < 70) return 16 + r.below(497);
  if (b < 95) return 512 + r.below(16 * 1024 - 512);
  return 16 * 1024 + r.below(240 * 1024);
}

size_t second_size(wl_rng& r) {
  if (r.below(100) < 97) return 24 + r.below(2977);
  return 20 * 1024 + r.below(80 * 1024);
}

Block make(size_t n, uint64_t tag) {
  auto* p = static_cast<unsigned char*>(std::malloc(n));
  if (p == nullptr) std::abort();
  std::memset(p, int(tag & 0xff), n);  // in use: every page is touched
  wl_fill(p, n, tag);
  return {p, n, tag};
}

void release(const Block& b, WlChecksum& sum, uint64_t& bad) {
  if (wl_verify(b.p, b.n, b.tag) && (b.n <= 64 || b.p[b.n / 2] == (b.tag & 0xff)))
    sum.add(b.tag ^ (uint64_t(b.n) << 40));
  else
    ++bad;
  std::free(b.p);
}

}  // namespace

int main(int argc, char** argv) {
  WlArgs args = wl_parse(argc, argv, "fragment");
  wl_arm_hard_cap(args);
  const size_t target = wl_pick<size_t>(args, 5, 150, 400) * 1000 * 1000;
  wl_rng rng(args.seed);
  WlChecksum made, freed;
  uint64_t bad = 0;

  const size_t rss0 = rss_kib();
  const double t0 = wl_now_s();

  // 1. fill
  std::vector<Block> blocks;
  size_t live = 0;
  for (uint64_t i = 0; live < target; ++i) {
    Block b = make(first_size(rng), i);
    made.add(b.tag ^ (uint64_t(b.n) << 40));
    live += b.n;
    blocks.push_back(b);
  }
  const size_t filled_rss = rss_kib();

  // 2. free a random 90%
  std::vector<Block> kept;
  for (auto& b : blocks) {
    if (rng.below(10) == 0) {
      kept.push_back(b);
    } else {
      live -= b.n;
      release(b, freed, bad);
    }
  }
  blocks.clear();
  blocks.shrink_to_fit();
  const size_t after_free_rss = rss_kib();

  // 3. allocate again, other sizes
  const size_t again = live + target / 2;
  for (uint64_t i = uint64_t(1) << 32; live < again; ++i) {
    Block b = make(second_size(rng), i);
    made.add(b.tag ^ (uint64_t(b.n) << 40));
    live += b.n;
    kept.push_back(b);
  }
  const double secs = wl_now_s() - t0;
  const size_t final_rss = rss_kib();
  const size_t peak = peak_rss_kib();

  for (auto& b : kept) release(b, freed, bad);

  WlResult r = wl_result("fragment", args.size, 1, "rss_per_live", "lower");
  const double live_kib = double(live) / 1024;
  r.metric("rss_per_live", (double(final_rss) - double(rss0)) / live_kib);
  r.metric("peak_rss_kib", double(peak));
  r.metric("final_rss_kib", double(final_rss));
  r.metric("live_kib", live_kib);
  r.metric("filled_rss_kib", double(filled_rss));
  r.metric("after_free_rss_kib", double(after_free_rss));
  r.metric("start_rss_kib", double(rss0));
  r.metric("time_s", secs);
  r.checksum = wl_hex(freed);
  r.checksum_ok = bad == 0 && made == freed;
  return wl_finish(r);
}
