// am_wl_bursty: bursts of load, then quiet; does memory go back, and what
// does an allocation cost during the burst?
//
// A pool of --threads workers simulates tasks. A burst runs B tasks in
// burst_s seconds (paced: the same requests at the same times under every
// allocator); each task allocates 1-4 blocks of 64-4095 bytes, writes all
// of them and keeps them alive until the burst ends: many tasks' worth of
// memory at once. Then every worker verifies and frees the blocks another
// worker allocated (cross-thread frees, as when completions land elsewhere).
// The quiet phase that follows keeps a steady rate of small tasks going, a
// tenth of the burst rate, each living for a while in a per-worker ring (so
// an allocator that purges on activity has the chance); with --quiet-idle
// the workers sleep through the quiet phase instead.
//
// Sizes: tiny 1 burst (0.05 s) + 0.15 s quiet, no 1 s figure; quick 3 bursts
// of 0.3 s each followed by 1.1 s quiet (about 4.5-5 s: longer than the other
// quick workloads because of the 1 s measurement); full 5 x (0.5 s + 1.5 s).
//
// A sampler thread reads /proc/self/statm every 10 ms (series rss_kib). The
// controller reads the RSS at the end of each burst's allocations (with the
// sampler's maximum: the burst's peak) and 100 ms and 1 s after the burst's
// frees are done. Every 16th block allocation of a burst is timed.
//
// Metrics: rss_after_1s_pct (primary; tiny: rss_after_100ms_pct), lower is
// better; rss_after_100ms_pct; burst_peak_rss_kib; baseline_rss_kib;
// peak_rss_kib; burst_s (mean time to run a burst's tasks, burst_s nominal);
// quiet_tasks; time_s; repeat_burst_minflt (minor page faults the workers
// took per burst after the first: what a burst pays on the request path).
// latency_ns: per-allocation latency during bursts.
//
// Extra flag: --quiet-idle (accepted before or after the common ones).
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "../wl_common.h"

namespace {

struct TaskRec {
  uint32_t n = 0;
  uint32_t size[4] = {};
  void* block[4] = {};
  uint64_t tag = 0;
};

// The shape of task `i` of burst `b`: the same for every allocator.
struct Shape {
  uint32_t n;
  uint32_t size[4];
};

Shape task_shape(uint64_t seed, uint64_t tag) {
  wl_rng rng(wl_mix(seed ^ tag));
  Shape s{};
  s.n = 1 + rng.below(4);
  for (uint32_t k = 0; k < s.n; ++k) {
    const uint32_t base = 64u << rng.below(6);  // 64 .. 2048
    s.size[k] = base + rng.below(base);         // 64 .. 4095, log-uniform-ish
  }
  return s;
}

uint64_t block_tag(uint64_t tag, uint32_t k) { return tag * 8 + k; }

// Allocates and writes a task's blocks; times the allocations that `timed`
// selects (every 16th of this thread) into lat.
TaskRec* run_task(uint64_t seed, uint64_t tag, uint64_t& nalloc, std::vector<uint64_t>* lat) {
  const Shape s = task_shape(seed, tag);
  auto* t = new TaskRec;
  t->n = s.n;
  t->tag = tag;
  for (uint32_t k = 0; k < s.n; ++k) {
    const size_t n = s.size[k];
    void* p;
    if (lat != nullptr && (nalloc++ & 15) == 0) {
      timespec a, b;
      clock_gettime(CLOCK_MONOTONIC, &a);
      p = std::malloc(n);
      clock_gettime(CLOCK_MONOTONIC, &b);
      if (lat->size() < lat->capacity())
        lat->push_back(uint64_t(b.tv_sec - a.tv_sec) * 1000000000ull + uint64_t(b.tv_nsec) -
                       uint64_t(a.tv_nsec));
    } else {
      p = std::malloc(n);
    }
    if (p == nullptr) {
      std::fprintf(stderr, "am_wl_bursty: malloc(%zu) failed\n", n);
      std::exit(1);
    }
    const uint64_t bt = block_tag(tag, k);
    std::memset(p, int(wl_mix(bt) & 0xff), n);  // the whole block is resident
    wl_fill(p, n, bt);
    t->size[k] = uint32_t(n);
    t->block[k] = p;
  }
  return t;
}

// Verifies and frees a task; adds its blocks to `sum` if they are intact.
bool finish_task(TaskRec* t, WlChecksum* sum) {
  bool ok = true;
  for (uint32_t k = 0; k < t->n; ++k) {
    const uint64_t bt = block_tag(t->tag, k);
    const size_t n = t->size[k];
    const auto* b = static_cast<const unsigned char*>(t->block[k]);
    if (!wl_verify(b, n, bt) || (n > 64 && b[n / 2] != (wl_mix(bt) & 0xff))) ok = false;
    if (sum != nullptr) sum->add(bt ^ (uint64_t(n) << 48));
    std::free(t->block[k]);
  }
  delete t;
  return ok;
}

enum Kind : int { kWait, kBurst, kFree, kQuiet, kExit };

struct Control {
  std::atomic<uint32_t> gen{0};
  std::atomic<int> kind{kWait};
  std::atomic<uint32_t> burst{0};
  std::atomic<double> t0{0};
  std::atomic<unsigned> done{0};

  void issue(Kind k, uint32_t b, double t) {
    kind.store(k, std::memory_order_relaxed);
    burst.store(b, std::memory_order_relaxed);
    t0.store(t, std::memory_order_relaxed);
    done.store(0, std::memory_order_relaxed);
    gen.fetch_add(1, std::memory_order_release);
    gen.notify_all();
  }
};

struct Params {
  uint64_t seed;
  unsigned threads;
  uint64_t tasks;     // per burst
  double burst_s;     // nominal burst length
  double quiet_rate;  // tasks per second in the quiet phase, all workers
  unsigned ring;      // quiet tasks alive per worker
  bool quiet_idle;
};

struct WorkerOut {
  std::vector<uint64_t> lat;
  WlChecksum sum;
  uint64_t bad = 0, quiet_tasks = 0;
  uint64_t repeat_minflt = 0;  // minor faults this worker took in bursts after the first
  alignas(64) char pad[64];
};

// Minor page faults of the calling thread: the request path's share, not
// that of a helper thread the allocator may run.
uint64_t thread_minflt() {
  rusage u;
  getrusage(RUSAGE_THREAD, &u);
  return uint64_t(u.ru_minflt);
}

void sleep_until_s(double t) {
  const double d = t - wl_now_s();
  if (d > 0) std::this_thread::sleep_for(std::chrono::duration<double>(d));
}

void worker(const Params& p, Control& ctl, std::vector<std::vector<TaskRec*>>& parts, unsigned w,
            WorkerOut& out) {
  uint32_t seen = 0;
  uint64_t nalloc = 0, quiet_seq = 0;
  std::deque<TaskRec*> ring;
  for (;;) {
    ctl.gen.wait(seen, std::memory_order_acquire);
    seen = ctl.gen.load(std::memory_order_acquire);
    const int kind = ctl.kind.load(std::memory_order_relaxed);
    const uint32_t b = ctl.burst.load(std::memory_order_relaxed);
    const double t0 = ctl.t0.load(std::memory_order_relaxed);
    if (kind == kExit) break;
    if (kind == kBurst) {
      // Tasks w, w+T, ...; task i is due at t0 + i/B * burst_s.
      auto& mine = parts[w];
      const uint64_t f0 = thread_minflt();
      for (uint64_t i = w; i < p.tasks; i += p.threads) {
        const double due = t0 + double(i) / double(p.tasks) * p.burst_s;
        if (due > wl_now_s() + 0.0005) sleep_until_s(due);
        mine.push_back(run_task(p.seed, (uint64_t(b) << 40) | i, nalloc, &out.lat));
      }
      if (b > 0) out.repeat_minflt += thread_minflt() - f0;
    } else if (kind == kFree) {
      // The blocks the next worker allocated.
      auto& theirs = parts[(w + 1) % p.threads];
      for (TaskRec* t : theirs)
        if (!finish_task(t, &out.sum)) ++out.bad;
      theirs.clear();
    } else if (kind == kQuiet && !p.quiet_idle) {
      // A steady trickle of short tasks until the next command.
      const double per_worker = p.quiet_rate / p.threads;
      uint64_t k = 0;
      while (ctl.gen.load(std::memory_order_acquire) == seen) {
        const double due = t0 + double(k) / per_worker;
        if (due > wl_now_s() + 0.0005) {
          sleep_until_s(std::min(due, wl_now_s() + 0.002));
          continue;
        }
        ++k;
        const uint64_t tag =
            (uint64_t(0xFFFFF) << 40) | (uint64_t(w) << 32) | (quiet_seq++ & 0xFFFFFFFF);
        ring.push_back(run_task(p.seed, tag, nalloc, nullptr));
        ++out.quiet_tasks;
        if (ring.size() > p.ring) {
          if (!finish_task(ring.front(), nullptr)) ++out.bad;
          ring.pop_front();
        }
      }
      continue;  // no done count: the controller moves on by time
    }
    if (kind == kBurst || kind == kFree) {
      ctl.done.fetch_add(1, std::memory_order_acq_rel);
      ctl.done.notify_all();
    }
  }
  for (TaskRec* t : ring)
    if (!finish_task(t, nullptr)) ++out.bad;
}

void wait_done(Control& ctl, unsigned n) {
  for (unsigned d = ctl.done.load(std::memory_order_acquire); d < n;
       d = ctl.done.load(std::memory_order_acquire))
    ctl.done.wait(d, std::memory_order_acquire);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> av;
  const bool quiet_idle = wl_take_flag(argc, argv, "--quiet-idle", av);
  WlArgs args = wl_parse(int(av.size()), av.data(), "bursty");
  wl_arm_hard_cap(args);
  const bool tiny = args.size == "tiny";

  Params p{};
  p.seed = args.seed;
  p.threads = args.threads;
  p.tasks = wl_pick<uint64_t>(args, 4000, 100000, 200000);
  p.burst_s = wl_pick(args, 0.05, 0.3, 0.5);
  p.quiet_rate = double(p.tasks) / p.burst_s / 10.0;
  p.ring = 256;
  p.quiet_idle = quiet_idle;
  const unsigned bursts = wl_pick(args, 1u, 3u, 5u);
  const double quiet_s = wl_pick(args, 0.15, 1.1, 1.5);

  WlResult r = wl_result(quiet_idle ? "bursty_idle" : "bursty", args.size, args.threads,
                         tiny ? "rss_after_100ms_pct" : "rss_after_1s_pct", "lower");

  Control ctl;
  std::vector<std::vector<TaskRec*>> parts(p.threads);
  std::vector<WorkerOut> outs(p.threads);
  for (auto& pv : parts) pv.reserve(size_t(p.tasks / p.threads + 1));
  for (auto& o : outs) o.lat.reserve(size_t((p.tasks * 4 / 16 / p.threads + 64) * bursts));
  std::vector<std::thread> th;
  for (unsigned w = 0; w < p.threads; ++w)
    th.emplace_back(worker, std::cref(p), std::ref(ctl), std::ref(parts), w, std::ref(outs[w]));

  WlRssSampler sampler;
  const double t_start = wl_now_s();
  sampler.start(10);
  const double baseline = double(rss_kib());
  std::vector<double> pct100, pct1s, peaks, burst_times;
  bool capped = false;
  for (unsigned b = 0; b < bursts; ++b) {
    const double tb = wl_now_s();
    ctl.issue(kBurst, b, tb);
    wait_done(ctl, p.threads);
    burst_times.push_back(wl_now_s() - tb);
    double peak = double(rss_kib());
    ctl.issue(kFree, b, 0);
    wait_done(ctl, p.threads);
    const double t_end = wl_now_s();
    for (auto& [t, v] : sampler.samples())
      if (t >= (tb - t_start) * 1000 - 10 && t <= (t_end - t_start) * 1000 + 10)
        peak = std::max(peak, v);
    peaks.push_back(peak);
    ctl.issue(kQuiet, b, t_end);
    sleep_until_s(t_end + 0.1);
    pct100.push_back(100.0 * double(rss_kib()) / peak);
    if (!tiny) {
      sleep_until_s(t_end + 1.0);
      pct1s.push_back(100.0 * double(rss_kib()) / peak);
    }
    sleep_until_s(t_end + quiet_s);
    if (wl_now_s() - t_start > wl_soft_cap_s(args)) {
      capped = b + 1 < bursts;
      break;
    }
  }
  ctl.issue(kExit, 0, 0);
  for (auto& t : th) t.join();
  sampler.stop();
  const double time_s = wl_now_s() - t_start;

  // The expected checksum, from the task shapes alone.
  WlChecksum expect, got;
  uint64_t bad = 0, quiet_tasks = 0;
  std::vector<uint64_t> lat;
  for (unsigned b = 0; b < peaks.size(); ++b)
    for (uint64_t i = 0; i < p.tasks; ++i) {
      const uint64_t tag = (uint64_t(b) << 40) | i;
      const Shape s = task_shape(p.seed, tag);
      for (uint32_t k = 0; k < s.n; ++k)
        expect.add(block_tag(tag, k) ^ (uint64_t(s.size[k]) << 48));
    }
  for (auto& o : outs) {
    got.merge(o.sum);
    bad += o.bad;
    quiet_tasks += o.quiet_tasks;
    lat.insert(lat.end(), o.lat.begin(), o.lat.end());
  }
  const bool ok = bad == 0 && got == expect;
  if (!ok)
    std::fprintf(stderr, "am_wl_bursty: %llu damaged tasks, checksum %s expected %s\n",
                 static_cast<unsigned long long>(bad), wl_hex(got).c_str(), wl_hex(expect).c_str());

  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / double(v.size());
  };
  r.metric(r.primary, tiny ? mean(pct100) : mean(pct1s));
  r.metric("rss_after_100ms_pct", mean(pct100));
  if (!tiny) r.metric("rss_after_1s_pct", mean(pct1s));
  r.metric("burst_peak_rss_kib", mean(peaks));
  r.metric("baseline_rss_kib", baseline);
  r.metric("peak_rss_kib", double(peak_rss_kib()));
  r.metric("bursts", double(peaks.size()));
  r.metric("burst_tasks", double(p.tasks));
  r.metric("burst_s", mean(burst_times));
  r.metric("burst_s_nominal", p.burst_s);
  r.metric("quiet_tasks", double(quiet_tasks));
  if (bursts > 1) {
    uint64_t flt = 0;
    for (auto& o : outs) flt += o.repeat_minflt;
    r.metric("repeat_burst_minflt", double(flt) / double(bursts - 1));
  }
  r.metric("time_s", time_s);
  if (capped) r.metric("capped", 1);
  r.latency =
      WlLatency{wl_percentile(lat, 0.5), wl_percentile(lat, 0.99), wl_percentile(lat, 0.999)};
  r.series.emplace_back("rss_kib", sampler.samples());
  r.checksum = wl_hex(got);
  r.checksum_ok = ok;
  std::fprintf(stderr,
               "bursty%s: %u threads, %zu bursts of %llu tasks, rss after 100 ms %.1f%%%s\n",
               quiet_idle ? " (quiet idle)" : "", p.threads, peaks.size(),
               static_cast<unsigned long long>(p.tasks), mean(pct100),
               tiny ? "" : (", after 1 s " + std::to_string(mean(pct1s)) + "%").c_str());
  return wl_finish(r);
}
