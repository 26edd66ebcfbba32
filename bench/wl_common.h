// Shared by the workload programs am_wl_*: the command line, the AMBENCH
// result line, RSS reading, percentiles, block patterns and checksums. The
// protocol these follow is docs/benchmark-protocol.md.
//
// Header-only, libc/libstdc++/pthread only: the programs must run unchanged
// under every allocator with LD_PRELOAD.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench_common.h"

// ---- command line ----------------------------------------------------------

struct WlArgs {
  std::string size = "quick";  // tiny | quick | full
  unsigned threads = 2;        // default max(2, hardware_concurrency)
  uint64_t seed = 0x5EEDA110Cull;
  bool threads_given = false;  // --threads was on the command line
};

[[noreturn]] inline void wl_usage(const char* name, int status) {
  std::fprintf(stderr, "usage: am_wl_%s [--size tiny|quick|full] [--threads N] [--seed S]\n", name);
  std::exit(status);
}

inline bool wl_parse_u64(const char* s, uint64_t& out) {
  if (s == nullptr || *s == '\0' || *s == '-') return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 0);
  if (errno != 0 || *end != '\0') return false;
  out = v;
  return true;
}

// Takes a program's own flag (before or after the common ones) out of the
// command line: whether it was there; `rest` gets the other arguments, for
// wl_parse.
inline bool wl_take_flag(int argc, char** argv, const char* flag, std::vector<char*>& rest) {
  bool found = false;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && std::strcmp(argv[i], flag) == 0)
      found = true;
    else
      rest.push_back(argv[i]);
  }
  return found;
}

// Parses --size/--threads/--seed (also as --opt=value); exits 2 on bad usage,
// 0 on --help.
inline WlArgs wl_parse(int argc, char** argv, const char* name) {
  WlArgs a;
  a.threads = std::max(2u, bench::hw_threads());
  for (int i = 1; i < argc; ++i) {
    std::string opt = argv[i];
    std::string val;
    bool has_val = false;
    if (size_t eq = opt.find('='); opt.rfind("--", 0) == 0 && eq != std::string::npos) {
      val = opt.substr(eq + 1);
      opt = opt.substr(0, eq);
      has_val = true;
    }
    if (opt == "-h" || opt == "--help") wl_usage(name, 0);
    if (opt != "--size" && opt != "--threads" && opt != "--seed") {
      std::fprintf(stderr, "am_wl_%s: unknown argument '%s'\n", name, argv[i]);
      wl_usage(name, 2);
    }
    if (!has_val) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "am_wl_%s: %s needs a value\n", name, opt.c_str());
        wl_usage(name, 2);
      }
      val = argv[++i];
    }
    uint64_t v = 0;
    if (opt == "--size") {
      if (val != "tiny" && val != "quick" && val != "full") {
        std::fprintf(stderr, "am_wl_%s: bad --size '%s'\n", name, val.c_str());
        wl_usage(name, 2);
      }
      a.size = val;
    } else if (opt == "--threads") {
      if (!wl_parse_u64(val.c_str(), v) || v == 0 || v > 1024) {
        std::fprintf(stderr, "am_wl_%s: bad --threads '%s'\n", name, val.c_str());
        wl_usage(name, 2);
      }
      a.threads = unsigned(v);
      a.threads_given = true;
    } else {
      if (!wl_parse_u64(val.c_str(), v)) {
        std::fprintf(stderr, "am_wl_%s: bad --seed '%s'\n", name, val.c_str());
        wl_usage(name, 2);
      }
      a.seed = v;
    }
  }
  return a;
}

// One of three values by --size.
template <class T>
T wl_pick(const WlArgs& a, T tiny, T quick, T full) {
  return a.size == "tiny" ? tiny : a.size == "full" ? full : quick;
}

// ---- time ------------------------------------------------------------------

inline double wl_now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

inline uint64_t wl_now_ns() {
  using namespace std::chrono;
  return uint64_t(duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count());
}

// Soft cap: a workload stops early (and says so in metrics "capped") when its
// measured part runs longer than this. The hard cap (wl_arm_hard_cap) ends
// the process with SIGALRM, a crash, if even that does not help.
inline double wl_soft_cap_s(const WlArgs& a) { return wl_pick(a, 5.0, 10.0, 30.0); }

inline void wl_arm_hard_cap(const WlArgs& a) { alarm(unsigned(wl_pick(a, 30, 40, 60))); }

// Runs fn(t) on n threads, t = 0..n-1, and joins them.
template <class F>
void wl_run_threads(unsigned n, F fn) {
  std::vector<std::thread> th;
  th.reserve(n);
  for (unsigned t = 0; t < n; ++t) th.emplace_back(fn, t);
  for (auto& x : th) x.join();
}

// ---- memory ----------------------------------------------------------------

// Reads a small /proc file into buf with open/read: no stdio, so no malloc
// (safe on a thread that must not allocate). Returns the length, 0 on error.
inline size_t wl_read_proc(const char* path, char* buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t len = 0;
  while (len + 1 < cap) {
    ssize_t n = read(fd, buf + len, cap - 1 - len);
    if (n <= 0) break;
    len += size_t(n);
  }
  close(fd);
  buf[len] = '\0';
  return len;
}

// Resident set size in KiB, from /proc/self/statm (second field, in pages).
// Allocates nothing.
inline size_t rss_kib() {
  char buf[128];
  if (wl_read_proc("/proc/self/statm", buf, sizeof buf) == 0) return 0;
  char* end = nullptr;
  std::strtoull(buf, &end, 10);  // size
  unsigned long long resident = std::strtoull(end, nullptr, 10);
  return size_t(resident) * size_t(sysconf(_SC_PAGESIZE)) / 1024;
}

// Peak resident set size in KiB (VmHWM from /proc/self/status). Allocates
// nothing.
inline size_t peak_rss_kib() {
  char buf[4096];
  if (wl_read_proc("/proc/self/status", buf, sizeof buf) == 0) return 0;
  const char* p = std::strstr(buf, "VmHWM:");
  return p == nullptr ? 0 : size_t(std::strtoull(p + 6, nullptr, 10));
}

// Samples rss_kib() every interval_ms on its own thread, from start() until
// stop(): the "rss_kib" series, [t_ms, kib] with t from start().
class WlRssSampler {
 public:
  void start(unsigned interval_ms = 10) {
    t0_ = wl_now_s();
    run_.store(true);
    th_ = std::thread([this, interval_ms] {
      while (run_.load(std::memory_order_relaxed)) {
        add();
        std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
      }
    });
  }
  void stop() {
    if (!th_.joinable()) return;
    run_.store(false);
    th_.join();
    add();
  }
  ~WlRssSampler() { stop(); }
  // Copy of the samples so far (safe while running).
  std::vector<std::pair<double, double>> samples() {
    std::lock_guard<std::mutex> lk(m_);
    return s_;
  }
  double max_kib() {
    std::lock_guard<std::mutex> lk(m_);
    double m = 0;
    for (auto& [t, v] : s_) m = std::max(m, v);
    return m;
  }

 private:
  void add() {
    double t = (wl_now_s() - t0_) * 1000.0;
    double v = double(rss_kib());
    std::lock_guard<std::mutex> lk(m_);
    s_.emplace_back(std::round(t), v);
  }
  double t0_ = 0;
  std::atomic<bool> run_{false};
  std::thread th_;
  std::mutex m_;
  std::vector<std::pair<double, double>> s_;
};

// ---- random numbers, percentiles -------------------------------------------

// splitmix64, the generator of every random choice.
using wl_rng = bench::Rng;

// splitmix64's finaliser: a well-mixed 64-bit value from any input.
inline uint64_t wl_mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The q-quantile (0 <= q <= 1) of v, by nearest rank; reorders v. 0 if empty.
inline double wl_percentile(std::vector<uint64_t>& v, double q) {
  if (v.empty()) return 0;
  q = std::clamp(q, 0.0, 1.0);
  size_t k = size_t(std::ceil(q * double(v.size())));
  k = k == 0 ? 0 : k - 1;
  std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(k), v.end());
  return double(v[k]);
}

// ---- block patterns and the checksum ---------------------------------------

// A block of n bytes carries a pattern derived from tag (e.g. slot and
// generation) in its first and last bytes (up to 32 each): cheap to write
// and verify, and it catches blocks that overlap or were handed out twice.
inline size_t wl_pattern_bytes(size_t n) { return n <= 64 ? n : 64; }

inline uint8_t wl_pattern_byte(uint64_t x, size_t i) {
  return uint8_t(uint8_t(x >> ((i & 7) * 8)) ^ uint8_t(i * 29));
}

inline void wl_fill(void* p, size_t n, uint64_t tag) {
  auto* b = static_cast<uint8_t*>(p);
  const uint64_t x = wl_mix(tag);
  if (n <= 64) {
    for (size_t i = 0; i < n; ++i) b[i] = wl_pattern_byte(x, i);
    return;
  }
  for (size_t i = 0; i < 32; ++i) b[i] = wl_pattern_byte(x, i);
  for (size_t i = 0; i < 32; ++i) b[n - 32 + i] = wl_pattern_byte(x, 32 + i);
}

// True if p still carries the pattern wl_fill wrote.
inline bool wl_verify(const void* p, size_t n, uint64_t tag) {
  const auto* b = static_cast<const uint8_t*>(p);
  const uint64_t x = wl_mix(tag);
  if (n <= 64) {
    for (size_t i = 0; i < n; ++i)
      if (b[i] != wl_pattern_byte(x, i)) return false;
    return true;
  }
  for (size_t i = 0; i < 32; ++i)
    if (b[i] != wl_pattern_byte(x, i)) return false;
  for (size_t i = 0; i < 32; ++i)
    if (b[n - 32 + i] != wl_pattern_byte(x, 32 + i)) return false;
  return true;
}

// An order-independent checksum of the work done: add() each verified item
// (e.g. tag and size of a block); the sum of mixed values does not depend on
// which thread verified what, or in what order. Merge per-thread checksums
// with merge().
struct WlChecksum {
  uint64_t sum = 0;
  uint64_t count = 0;
  void add(uint64_t v) {
    sum += wl_mix(v);
    ++count;
  }
  void merge(const WlChecksum& o) {
    sum += o.sum;
    count += o.count;
  }
  bool operator==(const WlChecksum& o) const { return sum == o.sum && count == o.count; }
};

inline std::string wl_hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

inline std::string wl_hex(const WlChecksum& c) { return wl_hex(c.sum ^ wl_mix(c.count)); }

// ---- the result line -------------------------------------------------------

struct WlLatency {
  double p50 = 0, p99 = 0, p999 = 0;
};

struct WlResult {
  std::string workload;
  std::string size = "quick";
  unsigned threads = 1;
  std::string primary;                                  // a name in metrics
  std::string better = "higher";                        // higher | lower
  std::vector<std::pair<std::string, double>> metrics;  // printed in this order
  std::string checksum;
  bool checksum_ok = false;
  std::optional<WlLatency> latency;  // latency_ns
  std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> series;

  // Sets (or replaces) a metric, keeping the order of first use.
  void metric(const std::string& name, double v) {
    for (auto& [k, x] : metrics)
      if (k == name) {
        x = v;
        return;
      }
    metrics.emplace_back(name, v);
  }
};

// A result with its identity filled in; the caller adds metrics.
inline WlResult wl_result(std::string workload, std::string size, unsigned threads,
                          std::string primary, std::string better) {
  WlResult r;
  r.workload = std::move(workload);
  r.size = std::move(size);
  r.threads = threads;
  r.primary = std::move(primary);
  r.better = std::move(better);
  return r;
}

inline void wl_json_string(std::string& out, const std::string& s) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
      out += buf;
    } else {
      out += c;
    }
  }
  out += '"';
}

inline void wl_json_number(std::string& out, double v) {
  char buf[40];
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  if (v == std::floor(v) && std::fabs(v) < 9.007199254740992e15)
    std::snprintf(buf, sizeof buf, "%.0f", v);
  else
    std::snprintf(buf, sizeof buf, "%.6g", v);
  out += buf;
}

// Prints the single "AMBENCH {...}" line to stdout (and flushes it).
inline void wl_print(const WlResult& r) {
  std::string o = "AMBENCH {\"workload\":";
  wl_json_string(o, r.workload);
  o += ",\"size\":";
  wl_json_string(o, r.size);
  o += ",\"threads\":" + std::to_string(r.threads) + ",\"primary\":";
  wl_json_string(o, r.primary);
  o += ",\"better\":";
  wl_json_string(o, r.better);
  o += ",\"metrics\":{";
  for (size_t i = 0; i < r.metrics.size(); ++i) {
    if (i) o += ',';
    wl_json_string(o, r.metrics[i].first);
    o += ':';
    wl_json_number(o, r.metrics[i].second);
  }
  o += "},\"checksum\":";
  wl_json_string(o, r.checksum);
  o += r.checksum_ok ? ",\"checksum_ok\":true" : ",\"checksum_ok\":false";
  if (r.latency) {
    o += ",\"latency_ns\":{\"p50\":";
    wl_json_number(o, r.latency->p50);
    o += ",\"p99\":";
    wl_json_number(o, r.latency->p99);
    o += ",\"p999\":";
    wl_json_number(o, r.latency->p999);
    o += '}';
  }
  if (!r.series.empty()) {
    o += ",\"series\":{";
    for (size_t i = 0; i < r.series.size(); ++i) {
      if (i) o += ',';
      wl_json_string(o, r.series[i].first);
      o += ":[";
      const auto& pts = r.series[i].second;
      for (size_t j = 0; j < pts.size(); ++j) {
        if (j) o += ',';
        o += '[';
        wl_json_number(o, pts[j].first);
        o += ',';
        wl_json_number(o, pts[j].second);
        o += ']';
      }
      o += ']';
    }
    o += '}';
  }
  o += "}\n";
  std::fputs(o.c_str(), stdout);
  std::fflush(stdout);
}

// Prints the line and returns the exit status: 0, or 3 for a wrong checksum.
inline int wl_finish(const WlResult& r) {
  wl_print(r);
  if (!r.checksum_ok) std::fprintf(stderr, "am_wl_%s: WRONG CHECKSUM\n", r.workload.c_str());
  return r.checksum_ok ? 0 : 3;
}
