// am_wl_larson: a server simulation in the style of Larson and Krishnan's
// benchmark. A shared array of slots (4096 per thread) holds live blocks;
// every thread repeatedly picks a random slot anywhere in the array, puts a
// new block of random size (16..1024 bytes) there and frees the block it
// replaced, which another thread most likely allocated: blocks move between
// threads as they would between the connections of a server.
//
// Every block carries its tag (slot, thread, counter) in its first 8 bytes
// and a pattern derived from it in the rest; the pattern is verified before
// each free. The checksum of the tags allocated must equal the checksum of
// the tags verified and freed.
//
// Metrics: ops_per_s (primary; one op = one malloc + one free), time_s,
// remote_free_pct (frees of a block another thread allocated), peak_rss_kib.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../wl_common.h"

namespace {

constexpr uint32_t kSlotsPerThread = 4096;

uint64_t make_tag(uint32_t slot, unsigned thread, uint32_t counter) {
  return (uint64_t(slot) << 40) | (uint64_t(thread & 0xff) << 32) | counter;
}

size_t tag_size(uint64_t tag, uint64_t seed) { return 16 + wl_mix(tag ^ seed) % 1009; }

void* new_block(uint64_t tag, uint64_t seed) {
  size_t n = tag_size(tag, seed);
  auto* p = static_cast<unsigned char*>(std::malloc(n));
  if (p == nullptr) std::abort();
  std::memcpy(p, &tag, 8);
  wl_fill(p + 8, n - 8, tag);
  return p;
}

// Verifies and frees a block that sat in slot; false if it was damaged.
bool free_block(void* q, uint32_t slot, uint64_t seed, WlChecksum& freed, unsigned self,
                uint64_t& remote) {
  auto* p = static_cast<unsigned char*>(q);
  uint64_t tag;
  std::memcpy(&tag, p, 8);
  bool ok = (tag >> 40) == slot && wl_verify(p + 8, tag_size(tag, seed) - 8, tag);
  if (ok) freed.add(tag);
  if (((tag >> 32) & 0xff) != (self & 0xff)) ++remote;
  std::free(p);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  WlArgs args = wl_parse(argc, argv, "larson");
  wl_arm_hard_cap(args);
  const unsigned T = args.threads;
  const uint32_t slots = kSlotsPerThread * T;
  const uint64_t ops_per_thread = wl_pick<uint64_t>(args, 40000, 1500000, 5000000);
  const double cap = wl_soft_cap_s(args);

  std::vector<std::atomic<void*>> array(slots);
  std::vector<WlChecksum> allocated(T), freed(T);
  std::vector<uint64_t> done(T, 0), remote(T, 0), bad(T, 0);
  std::atomic<bool> capped{false};

  // Each thread fills its own part of the array first.
  wl_run_threads(T, [&](unsigned t) {
    for (uint32_t s = t * kSlotsPerThread; s < (t + 1) * kSlotsPerThread; ++s) {
      uint64_t tag = make_tag(s, t, s);
      array[s].store(new_block(tag, args.seed), std::memory_order_relaxed);
      allocated[t].add(tag);
    }
  });

  const double t0 = wl_now_s();
  wl_run_threads(T, [&](unsigned t) {
    wl_rng rng(args.seed * 31 + t);
    uint32_t counter = slots;  // after the initial tags
    for (uint64_t i = 0; i < ops_per_thread; ++i) {
      if ((i & 4095) == 0 && (capped.load(std::memory_order_relaxed) || wl_now_s() - t0 > cap)) {
        capped.store(true);
        break;
      }
      uint32_t s = uint32_t(rng.next() % slots);
      uint64_t tag = make_tag(s, t, counter++);
      void* old = array[s].exchange(new_block(tag, args.seed), std::memory_order_acq_rel);
      allocated[t].add(tag);
      if (!free_block(old, s, args.seed, freed[t], t, remote[t])) ++bad[t];
      ++done[t];
    }
  });
  const double secs = wl_now_s() - t0;

  uint64_t not_counted = 0;
  for (uint32_t s = 0; s < slots; ++s)
    if (!free_block(array[s].load(), s, args.seed, freed[0], ~0u, not_counted)) ++bad[0];

  WlChecksum a, f;
  uint64_t ops = 0, nbad = 0, remote_total = 0;
  for (unsigned t = 0; t < T; ++t) {
    a.merge(allocated[t]);
    f.merge(freed[t]);
    ops += done[t];
    remote_total += remote[t];
    nbad += bad[t];
  }

  WlResult r = wl_result("larson", args.size, T, "ops_per_s", "higher");
  r.metric("ops_per_s", double(ops) / secs);
  r.metric("time_s", secs);
  r.metric("ops", double(ops));
  r.metric("remote_free_pct", ops ? 100.0 * double(remote_total) / double(ops) : 0);
  r.metric("peak_rss_kib", double(peak_rss_kib()));
  r.metric("capped", capped ? 1 : 0);
  r.checksum = wl_hex(f);
  r.checksum_ok = nbad == 0 && a == f && f.count == uint64_t(slots) + ops;
  if (nbad) std::fprintf(stderr, "larson: %llu damaged blocks\n", (unsigned long long)nbad);
  return wl_finish(r);
}
