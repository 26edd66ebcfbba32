// am_wl_realloc: buffers that grow with realloc, like strings and vectors.
//
// Every thread keeps 256 buffers and repeatedly appends to a random one:
//   string  appends 1..64 bytes, realloc to exactly the new length every
//           time; dies at a random length of 1..64 KiB;
//   vector  appends one 8-byte element, doubling the capacity with realloc
//           when full; dies at a random length of 1 KiB..2 MiB (so it also
//           crosses into the large-block range).
// A dead buffer is verified (every byte it was given, in order) and freed,
// and a new one starts in its place. At the end, all are verified and freed.
//
// Checksum: bytes verified must equal bytes appended, buffer by buffer.
//
// Metrics: appends_per_s (primary), reallocs_per_s, mib_per_s (appended),
// time_s, peak_rss_kib.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../wl_common.h"

namespace {

constexpr unsigned kBuffers = 256;

inline uint8_t content(uint64_t x, size_t i) { return uint8_t((x >> (i & 56)) + i); }

struct Buffer {
  unsigned char* p = nullptr;
  size_t len = 0, cap = 0, limit = 0;
  uint64_t key = 0;  // mixed (thread, buffer, generation)
  bool vec = false;
};

struct Stats {
  uint64_t appends = 0, reallocs = 0, appended = 0, verified = 0, bad = 0;
  WlChecksum sum;
};

void grow(Buffer& b, size_t cap, Stats& st) {
  void* q = std::realloc(b.p, cap);
  if (q == nullptr) std::abort();
  b.p = static_cast<unsigned char*>(q);
  b.cap = cap;
  ++st.reallocs;
}

void start(Buffer& b, uint64_t key, wl_rng& rng) {
  b = Buffer();
  b.key = wl_mix(key);
  b.vec = rng.below(2) == 0;
  b.limit = b.vec ? 1024 + rng.below(2 * 1024 * 1024 - 1024) : 1024 + rng.below(63 * 1024);
}

void finish(Buffer& b, Stats& st) {
  bool ok = true;
  for (size_t i = 0; i < b.len; ++i) ok = ok && b.p[i] == content(b.key, i);
  if (ok) {
    st.verified += b.len;
    st.sum.add(b.key ^ b.len);
  } else {
    ++st.bad;
  }
  std::free(b.p);
  b.p = nullptr;
}

void append(Buffer& b, wl_rng& rng, Stats& st) {
  size_t add = b.vec ? 8 : 1 + rng.below(64);
  size_t len = b.len + add;
  if (!b.vec)
    grow(b, len, st);
  else if (len > b.cap)
    grow(b, b.cap == 0 ? 64 : b.cap * 2, st);
  for (size_t i = b.len; i < len; ++i) b.p[i] = content(b.key, i);
  b.len = len;
  st.appended += add;
  ++st.appends;
}

}  // namespace

int main(int argc, char** argv) {
  WlArgs args = wl_parse(argc, argv, "realloc");
  wl_arm_hard_cap(args);
  const unsigned T = args.threads;
  const uint64_t ops = wl_pick<uint64_t>(args, 40000, 4000000, 20000000);
  const double cap = wl_soft_cap_s(args);
  std::vector<Stats> stats(T);
  std::atomic<bool> capped{false};

  const double t0 = wl_now_s();
  wl_run_threads(T, [&](unsigned t) {
    wl_rng rng(args.seed * 17 + t);
    Stats& st = stats[t];
    std::vector<Buffer> bufs(kBuffers);
    uint64_t gen = 0;
    for (unsigned i = 0; i < kBuffers; ++i) start(bufs[i], (uint64_t(t) << 40) | gen++, rng);
    for (uint64_t i = 0; i < ops; ++i) {
      if ((i & 4095) == 0 && wl_now_s() - t0 > cap) {
        capped.store(true);
        break;
      }
      Buffer& b = bufs[rng.below(kBuffers)];
      append(b, rng, st);
      if (b.len >= b.limit) {
        finish(b, st);
        start(b, (uint64_t(t) << 40) | gen++, rng);
      }
    }
    for (auto& b : bufs) finish(b, st);
  });
  const double secs = wl_now_s() - t0;

  Stats all;
  for (auto& s : stats) {
    all.appends += s.appends;
    all.reallocs += s.reallocs;
    all.appended += s.appended;
    all.verified += s.verified;
    all.bad += s.bad;
    all.sum.merge(s.sum);
  }

  WlResult r = wl_result("realloc", args.size, T, "appends_per_s", "higher");
  r.metric("appends_per_s", double(all.appends) / secs);
  r.metric("reallocs_per_s", double(all.reallocs) / secs);
  r.metric("mib_per_s", double(all.appended) / secs / (1024 * 1024));
  r.metric("time_s", secs);
  r.metric("peak_rss_kib", double(peak_rss_kib()));
  r.metric("capped", capped ? 1 : 0);
  r.checksum = wl_hex(all.sum);
  r.checksum_ok = all.bad == 0 && all.verified == all.appended;
  return wl_finish(r);
}
