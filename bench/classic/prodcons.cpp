// am_wl_prodcons: blocks allocated on producer threads and freed on consumer
// threads, passed in batches of 64 through bounded queues.
//
//   --mode 1to1   one producer, one consumer
//   --mode 1toN   one producer, N consumers (N = max(2, threads-1))
//   --mode Nto1   N producers, one consumer that only frees, never allocates
//   (default)     all three in sequence
//
// Nto1 is the case that hurts: the consumer's frees all go to other threads'
// memory, and an allocator that does not hand that memory back to the
// producers grows without bound (seen in some mimalloc versions, mimalloc
// issue #1364). The queues are bounded, so the live memory is; RSS is sampled
// every 10 ms, and rss_bounded is 1 when the highest RSS of the last quarter
// of the Nto1 phase is at most 1.25 x that of its second quarter (+ 4 MiB).
// 1to1 and 1toN pass a fixed number of blocks (quick: 400000); Nto1 runs for
// a fixed time (tiny 0.04 s, quick 0.4 s, full 2 s).
//
// Every block carries its tag (producer, counter) in its first 8 bytes and a
// pattern derived from it; consumers verify it before the free. The checksum
// of the tags produced must equal that of the tags verified and freed.
//
// Metrics: frees_per_s (primary, over all phases run), <mode>_frees_per_s,
// <mode>_peak_rss_kib, nto1_rss_q2_kib, nto1_rss_q4_kib, rss_bounded;
// series rss_kib over the whole run.
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "../wl_common.h"

namespace {

constexpr size_t kBatch = 64;
constexpr size_t kQueueBatches = 256;  // per consumer: at most 16384 blocks in flight

using Batch = std::vector<void*>;

struct Queue {
  std::mutex m;
  std::condition_variable not_full, not_empty;
  std::deque<Batch> q;
  unsigned producers_left = 0;

  void put(Batch b) {
    std::unique_lock<std::mutex> lk(m);
    not_full.wait(lk, [&] { return q.size() < kQueueBatches; });
    q.push_back(std::move(b));
    not_empty.notify_one();
  }
  void producer_done() {
    std::lock_guard<std::mutex> lk(m);
    --producers_left;
    not_empty.notify_all();
  }
  // False when every producer is done and the queue is empty.
  bool get(Batch& out) {
    std::unique_lock<std::mutex> lk(m);
    not_empty.wait(lk, [&] { return !q.empty() || producers_left == 0; });
    if (q.empty()) return false;
    out = std::move(q.front());
    q.pop_front();
    not_full.notify_one();
    return true;
  }
};

// 16..1024 bytes, with 2% of 1..16 KiB.
size_t tag_size(uint64_t tag, uint64_t seed) {
  uint64_t h = wl_mix(tag ^ seed);
  if (h % 50 == 0) return 1024 + (h >> 8) % (15 * 1024);
  return 16 + (h >> 8) % 1009;
}

struct Phase {
  std::string name;
  unsigned producers, consumers;
  double secs = 0;
  uint64_t frees = 0, sum = 0;
  bool ok = false;
  double t_begin_ms = 0, t_end_ms = 0;
};

// Producers make blocks_per_producer blocks each, or, if run_for > 0, as
// many as they can in run_for seconds.
void run_phase(Phase& ph, uint64_t blocks_per_producer, double run_for, const WlArgs& args,
               std::atomic<bool>& capped) {
  std::vector<Queue> queues(ph.consumers);
  for (auto& q : queues) q.producers_left = ph.producers;
  std::vector<WlChecksum> made(ph.producers), freed(ph.consumers);
  std::vector<uint64_t> bad(ph.consumers, 0);
  const double cap = wl_soft_cap_s(args) / 3;
  const double t0 = wl_now_s();
  wl_run_threads(ph.producers + ph.consumers, [&](unsigned t) {
    if (t < ph.producers) {
      wl_rng rng(args.seed * 131 + t);
      Batch b;
      b.reserve(kBatch);
      unsigned next = t % ph.consumers;
      for (uint64_t i = 0; i < blocks_per_producer; ++i) {
        if ((i & 1023) == 0) {
          double t = wl_now_s() - t0;
          if (run_for > 0 && t > run_for) break;
          if (capped.load(std::memory_order_relaxed) || t > cap) {
            capped.store(true);
            break;
          }
        }
        uint64_t tag = (uint64_t(t) << 40) | i;
        size_t n = tag_size(tag, args.seed);
        auto* p = static_cast<unsigned char*>(std::malloc(n));
        if (p == nullptr) std::abort();
        std::memcpy(p, &tag, 8);
        wl_fill(p + 8, n - 8, tag);
        made[t].add(tag);
        b.push_back(p);
        if (b.size() == kBatch) {
          queues[next].put(std::move(b));
          next = (next + 1) % ph.consumers;
          b = Batch();
          b.reserve(kBatch);
        }
      }
      if (!b.empty()) queues[next].put(std::move(b));
      for (auto& q : queues) q.producer_done();
    } else {
      // The consumer only verifies and frees (the batch's vector included).
      unsigned c = t - ph.producers;
      Batch b;
      while (queues[c].get(b)) {
        for (void* q : b) {
          auto* p = static_cast<unsigned char*>(q);
          uint64_t tag;
          std::memcpy(&tag, p, 8);
          if (wl_verify(p + 8, tag_size(tag, args.seed) - 8, tag))
            freed[c].add(tag);
          else
            ++bad[c];
          std::free(p);
        }
        b = Batch();
      }
    }
  });
  ph.secs = wl_now_s() - t0;
  WlChecksum m, f;
  uint64_t nbad = 0;
  for (auto& x : made) m.merge(x);
  for (auto& x : freed) f.merge(x);
  for (auto x : bad) nbad += x;
  ph.frees = f.count;
  ph.sum = f.sum;
  ph.ok = nbad == 0 && m == f;
  if (!ph.ok)
    std::fprintf(stderr, "prodcons %s: %llu damaged, %llu made, %llu freed\n", ph.name.c_str(),
                 (unsigned long long)nbad, (unsigned long long)m.count,
                 (unsigned long long)f.count);
}

}  // namespace

int main(int argc, char** argv) {
  // --mode is ours; the rest goes to wl_parse.
  std::string mode = "all";
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--mode" && i + 1 < argc) {
      mode = argv[++i];
    } else if (a.rfind("--mode=", 0) == 0) {
      mode = a.substr(7);
    } else if (a == "--mode") {
      mode = "";
    } else {
      if (a == "-h" || a == "--help") std::fprintf(stderr, "  [--mode 1to1|1toN|Nto1]\n");
      rest.push_back(argv[i]);
    }
  }
  WlArgs args = wl_parse(int(rest.size()), rest.data(), "prodcons");
  if (mode != "all" && mode != "1to1" && mode != "1toN" && mode != "Nto1") {
    std::fprintf(stderr, "am_wl_prodcons: --mode 1to1|1toN|Nto1 (default: all three)\n");
    return 2;
  }
  wl_arm_hard_cap(args);
  const unsigned n = std::max(2u, args.threads - 1);
  const uint64_t blocks = wl_pick<uint64_t>(args, 20000, 400000, 1500000);
  // Nto1 runs for a fixed time instead, long enough to see RSS over time.
  const double nto1_secs = wl_pick(args, 0.04, 0.4, 2.0);

  std::vector<Phase> phases;
  if (mode == "all" || mode == "1to1") phases.push_back({"1to1", 1, 1});
  if (mode == "all" || mode == "1toN") phases.push_back({"1toN", 1, n});
  if (mode == "all" || mode == "Nto1") phases.push_back({"Nto1", n, 1});

  WlRssSampler sampler;
  std::atomic<bool> capped{false};
  sampler.start(10);
  const double start = wl_now_s();
  for (auto& ph : phases) {
    ph.t_begin_ms = (wl_now_s() - start) * 1000;
    // The same total number of blocks in 1to1 and 1toN.
    if (ph.name == "Nto1")
      run_phase(ph, UINT64_MAX, nto1_secs, args, capped);
    else
      run_phase(ph, blocks / ph.producers, 0, args, capped);
    ph.t_end_ms = (wl_now_s() - start) * 1000;
  }
  sampler.stop();
  auto series = sampler.samples();

  WlResult r;
  r.workload = "prodcons";
  r.size = args.size;
  r.primary = "frees_per_s";
  r.better = "higher";
  double secs = 0, frees = 0;
  bool ok = true;
  unsigned threads = 0;
  for (auto& ph : phases) {
    secs += ph.secs;
    frees += double(ph.frees);
    ok = ok && ph.ok;
    threads = std::max(threads, ph.producers + ph.consumers);
  }
  r.threads = threads;
  r.metric("frees_per_s", frees / secs);
  r.metric("time_s", secs);
  uint64_t sum = 0;
  for (auto& ph : phases) {
    std::string key = ph.name == "1to1" ? "1to1" : ph.name == "1toN" ? "1ton" : "nto1";
    double peak = 0;
    for (auto& [t, v] : series)
      if (t >= ph.t_begin_ms - 10 && t <= ph.t_end_ms + 10) peak = std::max(peak, v);
    r.metric(key + "_frees_per_s", double(ph.frees) / ph.secs);
    r.metric(key + "_peak_rss_kib", peak);
    sum = wl_mix(sum ^ ph.sum) + ph.frees;
    if (ph.name != "Nto1") continue;
    // Highest RSS in the second and in the last quarter of the phase (if a
    // quarter holds no sample, as in a very short run: the sample nearest
    // to its middle).
    double len = std::max(1.0, ph.t_end_ms - ph.t_begin_ms);
    auto quarter = [&](double lo, double hi) {
      double best = 0, near = 0, dist = 1e300;
      for (auto& [t, v] : series) {
        double x = (t - ph.t_begin_ms) / len;
        if (x >= lo && x <= hi) best = std::max(best, v);
        if (std::fabs(x - (lo + hi) / 2) < dist) {
          dist = std::fabs(x - (lo + hi) / 2);
          near = v;
        }
      }
      return best > 0 ? best : near;
    };
    double q2 = quarter(0.25, 0.5), q4 = quarter(0.75, 1.0);
    r.metric("nto1_rss_q2_kib", q2);
    r.metric("nto1_rss_q4_kib", q4);
    r.metric("rss_bounded", q4 <= 1.25 * q2 + 4096 ? 1 : 0);
  }
  r.metric("peak_rss_kib", double(peak_rss_kib()));
  r.metric("capped", capped ? 1 : 0);
  r.checksum = wl_hex(sum);
  r.checksum_ok = ok;
  r.series.emplace_back("rss_kib", std::move(series));
  return wl_finish(r);
}
