// am_wl_falseshare: false sharing the allocator causes, after the cache-thrash
// and cache-scratch tests of the Hoard paper (written from their description).
//
//   active   every thread repeatedly allocates a small object (8 bytes),
//            writes it hard (1000 read-modify-writes of each byte) and frees
//            it. If the allocator gives objects of different threads one
//            cache line, the line bounces between cores.
//   passive  one thread allocates one small object per thread, back to back
//            (so they share cache lines), and hands one to each thread; each
//            frees it, then allocates, writes hard and frees as above. An
//            allocator that gives the freed object back to the thread that
//            freed it keeps the threads on one line.
//
// Each object is verified (every byte written exactly the expected number of
// times) before it is freed; the checksum covers the objects verified.
//
// Metrics: time_s (primary, lower is better: both variants), active_time_s,
// passive_time_s, writes_per_s, active_shared_line_threads and
// passive_shared_line_threads (threads whose first object shared a 64-byte
// line with another thread's object).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "../wl_common.h"

namespace {

constexpr size_t kObj = 8;
constexpr unsigned kReps = 1000;

struct Variant {
  double secs = 0;
  unsigned shared_threads = 0;
  WlChecksum verified;
  uint64_t bad = 0;
  bool capped = false;
};

// Write each byte of p kReps times; true if each ends at kReps (mod 256).
bool hammer(void* p) {
  volatile unsigned char* b = static_cast<unsigned char*>(p);
  for (size_t k = 0; k < kObj; ++k) b[k] = 0;
  for (unsigned r = 0; r < kReps; ++r)
    for (size_t k = 0; k < kObj; ++k) b[k] = static_cast<unsigned char>(b[k] + 1);
  for (size_t k = 0; k < kObj; ++k)
    if (b[k] != static_cast<unsigned char>(kReps)) return false;
  return true;
}

unsigned count_shared(const std::vector<uintptr_t>& first) {
  unsigned n = 0;
  for (size_t i = 0; i < first.size(); ++i)
    for (size_t j = 0; j < first.size(); ++j)
      if (i != j && first[i] / 64 == first[j] / 64) {
        ++n;
        break;
      }
  return n;
}

Variant run(bool passive, unsigned T, uint64_t iters, double cap) {
  Variant v;
  std::vector<void*> handed(T, nullptr);
  if (passive)
    for (auto& p : handed) p = std::malloc(kObj);
  std::vector<uintptr_t> first(T, 0);
  std::vector<WlChecksum> sums(T);
  std::vector<uint64_t> bad(T, 0);
  std::atomic<unsigned> ready{0};
  std::atomic<bool> capped{false};
  double t0 = 0;
  wl_run_threads(T, [&](unsigned t) {
    // Start together, so that the objects are in use at the same time.
    ready.fetch_add(1);
    while (ready.load() < T) std::this_thread::yield();
    if (t == 0) t0 = wl_now_s();
    const double start = wl_now_s();
    if (passive) {
      hammer(handed[t]);
      std::free(handed[t]);
    }
    for (uint64_t i = 0; i < iters; ++i) {
      if ((i & 63) == 0 && wl_now_s() - start > cap) {
        capped.store(true);
        break;
      }
      void* p = std::malloc(kObj);
      if (p == nullptr) std::abort();
      if (i == 0) first[t] = reinterpret_cast<uintptr_t>(p);
      if (hammer(p))
        sums[t].add((uint64_t(t) << 32) | i);
      else
        ++bad[t];
      std::free(p);
    }
  });
  v.secs = wl_now_s() - t0;
  v.shared_threads = count_shared(first);
  for (auto& s : sums) v.verified.merge(s);
  for (auto b : bad) v.bad += b;
  v.capped = capped;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  WlArgs args = wl_parse(argc, argv, "falseshare");
  wl_arm_hard_cap(args);
  const unsigned T = args.threads;
  const uint64_t iters = wl_pick<uint64_t>(args, 400, 40000, 150000);
  const double cap = wl_soft_cap_s(args) / 2;

  Variant active = run(false, T, iters, cap);
  Variant passive = run(true, T, iters, cap);

  // What a complete run verifies, computed without touching memory.
  WlChecksum expected;
  for (unsigned t = 0; t < T; ++t)
    for (uint64_t i = 0; i < iters; ++i) expected.add((uint64_t(t) << 32) | i);
  WlChecksum got = active.verified;
  got.merge(passive.verified);
  WlChecksum want = expected;
  want.merge(expected);
  const bool capped = active.capped || passive.capped;

  WlResult r = wl_result("falseshare", args.size, T, "time_s", "lower");
  const double secs = active.secs + passive.secs;
  r.metric("time_s", secs);
  r.metric("active_time_s", active.secs);
  r.metric("passive_time_s", passive.secs);
  r.metric("writes_per_s", double(got.count) * kObj * kReps / secs);
  r.metric("active_shared_line_threads", active.shared_threads);
  r.metric("passive_shared_line_threads", passive.shared_threads);
  r.metric("capped", capped ? 1 : 0);
  r.checksum = wl_hex(got);
  // A capped run did less work, but every object it wrote must have verified.
  r.checksum_ok = active.bad + passive.bad == 0 && (capped ? got.count > 0 : got == want);
  return wl_finish(r);
}
