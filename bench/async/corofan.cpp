// am_wl_corofan: coroutine fan-out/fan-in on a work-stealing pool.
//
// Each round builds a tree of C++20 coroutine tasks: a node spawns `fanout`
// children, awaits them all and returns its own index plus the sum of its
// children's values; the leaves return their index (plus the seed). Nodes are
// numbered breadth first (the children of i are i*k+1 .. i*k+k), so the root's
// value is N*seed + N*(N-1)/2 for a tree of N nodes: the checksum, known in
// closed form. Frames are short-lived, of a few fixed sizes, created on one
// worker and (whenever a child was stolen) destroyed on another: the
// pattern an async runtime gives its allocator. The program counts those
// cross-thread frees to show that they happen.
//
// Built a second time as am_wl_corochain (WL_CHAIN): deep co_await chains.
// The root spawns 16 chains; every other node awaits one child, down to a
// depth of 256 (quick): a deep stack of suspended frames on each chain,
// created level by level wherever the chain runs and destroyed in reverse
// order as the results come back up.
//
// Metrics: tasks_per_s (primary), time_s, tasks, cross_thread_frees,
// cross_free_pct, steals, peak_rss_kib.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#include "../wl_common.h"
#include "coro_pool.h"

using wl_async::Pool;
using wl_async::Task;

namespace {

// Trees: `fanout` children per node. Chains (chain = true): the root has
// `fanout` children, every other node one. Either way the nodes are
// numbered 0..N-1, level by level.
struct Shape {
  uint64_t fanout;
  unsigned depth;  // levels below the root
  uint64_t seed;
  bool chain = false;
};

// Half of the leaves (chosen by the seed) wait for a simulated I/O
// completion that arrives on the next worker, and finish there.
Task<uint64_t> leaf(Pool& pool, uint64_t index, uint64_t seed) {
  if (wl_mix(seed ^ index) & 1) co_await pool.hop();
  co_return index + seed;
}

Task<uint64_t> node(Pool& pool, const Shape& s, uint64_t index, unsigned level) {
  std::vector<Task<uint64_t>> kids;
  const uint64_t n_kids = s.chain && level > 0 ? 1 : s.fanout;
  kids.reserve(n_kids);
  const uint64_t first = s.chain ? (level == 0 ? 1 : index + s.fanout) : index * s.fanout + 1;
  for (uint64_t c = 0; c < n_kids; ++c) {
    if (level + 1 == s.depth)
      kids.push_back(leaf(pool, first + c, s.seed));
    else
      kids.push_back(node(pool, s, first + c, level + 1));
  }
  co_await wl_async::join(pool, kids);
  uint64_t sum = index + s.seed;
  for (auto& k : kids) sum += k.value();
  co_return sum;  // `kids` (the frames and the vector) is freed here
}

uint64_t tree_nodes(const Shape& s) {
  if (s.chain) return 1 + s.fanout * s.depth;
  uint64_t n = 1, level = 1;
  for (unsigned d = 0; d < s.depth; ++d) {
    level *= s.fanout;
    n += level;
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
#ifdef WL_CHAIN
  const char* name = "corochain";
  WlArgs args = wl_parse(argc, argv, name);
  wl_arm_hard_cap(args);
  Shape shape{16, wl_pick(args, 64u, 256u, 1024u), args.seed, true};
  const unsigned rounds = wl_pick(args, 2u, 600u, 1000u);
#else
  const char* name = "corofan";
  WlArgs args = wl_parse(argc, argv, name);
  wl_arm_hard_cap(args);
  Shape shape{4, wl_pick(args, 5u, 9u, 10u), args.seed};
  const unsigned rounds =
      wl_pick(args, 2u, 20u, 40u);  // enough rounds to average how work is stolen
#endif
  const uint64_t n = tree_nodes(shape);
  // Unsigned arithmetic modulo 2^64, like the tasks' own sums.
  const uint64_t expect_root =
      n * shape.seed + (n % 2 == 0 ? (n / 2) * (n - 1) : n * ((n - 1) / 2));

  WlResult r = wl_result(name, args.size, args.threads, "tasks_per_s", "higher");

  Pool pool(args.threads);
  const double soft_cap = wl_soft_cap_s(args);
  bool ok = true, capped = false;
  uint64_t checksum = 0, tasks = 0;
  const double t0 = wl_now_s();
  for (unsigned round = 0; round < rounds; ++round) {
    std::atomic<bool> done{false};
    Task<uint64_t> root = node(pool, shape, 0, 0);
    root.handle().promise().done = &done;
    pool.post(root.handle());
    while (!done.load(std::memory_order_acquire)) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (wl_now_s() - t0 > 2 * soft_cap) {
        // Hung: report a wrong result rather than wait for the alarm.
        std::fprintf(stderr, "am_wl_%s: round %u did not finish in time\n", name, round);
        r.metric("time_s", wl_now_s() - t0);
        r.checksum = wl_hex(checksum);
        r.checksum_ok = false;
        wl_print(r);
        std::fflush(nullptr);
        _exit(3);
      }
    }
    const uint64_t v = root.value();
    if (v != expect_root) {
      std::fprintf(stderr, "am_wl_%s: round %u: root value %016llx, expected %016llx\n", name,
                   round, static_cast<unsigned long long>(v),
                   static_cast<unsigned long long>(expect_root));
      ok = false;
    }
    checksum = wl_mix(checksum ^ v);
    tasks += n;
    if (wl_now_s() - t0 > soft_cap) {
      capped = round + 1 < rounds;
      break;
    }
  }
  const double time_s = wl_now_s() - t0;
  pool.stop();

  // The main thread created the roots; the workers everything else.
  const uint64_t frames = pool.frames() + wl_async::tl_frames;
  const uint64_t cross = pool.cross_frees() + wl_async::tl_cross_frees;
  if (frames != tasks) {
    std::fprintf(stderr, "am_wl_%s: %llu frames created, %llu tasks expected\n", name,
                 static_cast<unsigned long long>(frames), static_cast<unsigned long long>(tasks));
    ok = false;
  }

  r.metric("tasks_per_s", double(tasks) / time_s);
  r.metric("time_s", time_s);
  r.metric("tasks", double(tasks));
  r.metric("cross_thread_frees", double(cross));
  r.metric("cross_free_pct", tasks ? 100.0 * double(cross) / double(tasks) : 0);
  r.metric("steals", double(pool.steals()));
  r.metric("peak_rss_kib", double(peak_rss_kib()));
  if (capped) r.metric("capped", 1);
  r.checksum = wl_hex(checksum);
  r.checksum_ok = ok;
  std::fprintf(stderr, "%s: %u threads, %llu tasks in %.3f s, %llu freed on another thread\n", name,
               args.threads, static_cast<unsigned long long>(tasks), time_s,
               static_cast<unsigned long long>(cross));
  return wl_finish(r);
}
