// am_wl_large: large blocks, 256 KiB to 64 MiB (log-uniform: as many of
// 256 KiB..1 MiB as of 16..64 MiB; --size tiny stops at 16 MiB).
//
// Every thread keeps 3 slots and repeatedly replaces a random one: verify
// and free the old block, malloc a new one and write one 8-byte word in
// every 4 KiB page of it (as a program that uses the block would touch its
// pages), plus a pattern at its head and tail. What counts is how the
// allocator gets and returns large blocks: mmap/munmap, page faults, reuse.
//
// Checksum: every word written is verified before the free.
//
// Metrics: ops_per_s (primary; one op = one free + one malloc + touching),
// time_s, peak_rss_kib, gib_per_s (bytes of blocks allocated);
// latency_ns of the malloc call alone.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../wl_common.h"

namespace {

constexpr unsigned kSlots = 3;
constexpr size_t kPage = 4096;

struct Block {
  unsigned char* p = nullptr;
  size_t n = 0;
  uint64_t tag = 0;
};

size_t large_size(wl_rng& r, double max_log2) {
  // 2^18 .. 2^max_log2 bytes, log-uniform, rounded to 8.
  double e = 18.0 + (max_log2 - 18.0) * double(r.next() >> 11) / 9007199254740992.0;
  return size_t(std::exp2(e)) & ~size_t(7);
}

void touch(Block& b) {
  for (size_t off = 0; off + 8 <= b.n - 64; off += kPage) {
    uint64_t w = b.tag ^ off;
    std::memcpy(b.p + off, &w, 8);
  }
  wl_fill(b.p + 8, 56, b.tag);  // head, after the first page's word
  wl_fill(b.p + b.n - 64, 64, b.tag ^ 1);
}

bool check(const Block& b) {
  for (size_t off = 0; off + 8 <= b.n - 64; off += kPage) {
    uint64_t w;
    std::memcpy(&w, b.p + off, 8);
    if (w != (b.tag ^ off)) return false;
  }
  return wl_verify(b.p + 8, 56, b.tag) && wl_verify(b.p + b.n - 64, 64, b.tag ^ 1);
}

}  // namespace

int main(int argc, char** argv) {
  WlArgs args = wl_parse(argc, argv, "large");
  wl_arm_hard_cap(args);
  const unsigned T = args.threads;
  const uint64_t ops = wl_pick<uint64_t>(args, 6, 120, 400);
  const double max_log2 = wl_pick(args, 24.0, 26.0, 26.0);  // tiny: up to 16 MiB
  const double cap = wl_soft_cap_s(args);
  std::vector<WlChecksum> made(T), freed(T);
  std::vector<uint64_t> bad(T, 0), bytes(T, 0), done(T, 0);
  std::vector<std::vector<uint64_t>> lat(T);
  std::atomic<bool> capped{false};

  const double t0 = wl_now_s();
  wl_run_threads(T, [&](unsigned t) {
    wl_rng rng(args.seed * 7 + t);
    Block slots[kSlots];
    auto release = [&](Block& b) {
      if (b.p == nullptr) return;
      if (check(b))
        freed[t].add(b.tag ^ b.n);
      else
        ++bad[t];
      std::free(b.p);
      b.p = nullptr;
    };
    for (uint64_t i = 0; i < ops + kSlots; ++i) {
      if (wl_now_s() - t0 > cap) {
        capped.store(true);
        break;
      }
      // The first kSlots ops fill the slots.
      Block& b = slots[i < kSlots ? i : rng.below(kSlots)];
      release(b);
      b.n = large_size(rng, max_log2);
      b.tag = wl_mix((uint64_t(t) << 32) | i) & ~uint64_t(0xfff);
      const uint64_t a0 = wl_now_ns();
      b.p = static_cast<unsigned char*>(std::malloc(b.n));
      lat[t].push_back(wl_now_ns() - a0);
      if (b.p == nullptr) std::abort();
      touch(b);
      made[t].add(b.tag ^ b.n);
      bytes[t] += b.n;
      if (i >= kSlots) ++done[t];
    }
    for (auto& b : slots) release(b);
  });
  const double secs = wl_now_s() - t0;

  WlChecksum m, f;
  uint64_t nbad = 0, nbytes = 0, nops = 0;
  std::vector<uint64_t> all;
  for (unsigned t = 0; t < T; ++t) {
    m.merge(made[t]);
    f.merge(freed[t]);
    nbad += bad[t];
    nbytes += bytes[t];
    nops += done[t];
    all.insert(all.end(), lat[t].begin(), lat[t].end());
  }

  WlResult r = wl_result("large", args.size, T, "ops_per_s", "higher");
  r.metric("ops_per_s", double(nops) / secs);
  r.metric("time_s", secs);
  r.metric("gib_per_s", double(nbytes) / secs / (1024.0 * 1024 * 1024));
  r.metric("peak_rss_kib", double(peak_rss_kib()));
  r.metric("capped", capped ? 1 : 0);
  r.latency =
      WlLatency{wl_percentile(all, 0.5), wl_percentile(all, 0.99), wl_percentile(all, 0.999)};
  r.checksum = wl_hex(f);
  r.checksum_ok = nbad == 0 && m == f;
  return wl_finish(r);
}
