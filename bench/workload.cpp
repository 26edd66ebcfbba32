// am_workload: whole-program allocation workloads, timed from outside (wall
// time and peak RSS with /usr/bin/time) by scripts/compare.
//
//   am_workload MODE [SCALE]
//
//   stl      std::map / std::unordered_map / std::string / std::vector churn,
//            single thread: what an ordinary C++ program does.
//   xthread  one thread per hardware thread (at least 2) in a ring: each
//            allocates batches of blocks and hands them to the next, which
//            frees them (every free is a remote free), with many blocks in
//            flight.
//   burst    phases of many small blocks allocated then mostly freed (10%
//            survive each phase, at changing sizes): fragmentation and how
//            much memory stays resident.
//   mixed    two threads, each with a working set of blocks from 8 bytes to
//            64 KiB (mostly small), random replacement.
//
// SCALE (default 1) multiplies the amount of work. Everything random comes
// from fixed seeds. Prints a checksum so the work cannot be optimised away.
//
// Linked against libc/libstdc++ only: the allocator is chosen with LD_PRELOAD.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bench_common.h"

namespace {

using bench::hw_threads;
using bench::Rng;
using bench::small_size;




uint64_t run_stl(unsigned scale) {
  Rng rng(0x57100001);
  uint64_t sum = 0;
  for (unsigned round = 0; round < 18 * scale; ++round) {
    std::map<std::string, std::vector<uint32_t>> index;
    std::unordered_map<uint64_t, std::string> names;
    for (unsigned i = 0; i < 60000; ++i) {
      // Keys longer than the small-string buffer, so each one allocates.
      std::string key = "key-" + std::to_string(rng.below(40000)) + "-of-the-index";
      auto& v = index[key];
      v.push_back(i);
      uint64_t id = rng.below(50000);
      names[id] = std::string(16 + rng.below(100), char('a' + i % 26));
      if (i % 3 == 0) {
        auto it = index.lower_bound("key-" + std::to_string(rng.below(40000)));
        if (it != index.end()) {
          sum += it->second.size();
          index.erase(it);
        }
        names.erase(rng.below(50000));
      }
    }
    for (auto& [k, v] : index) sum += k.size() + v.size();
    for (auto& [k, v] : names) sum += k + v.size();
  }
  return sum;
}

// A bounded mailbox of batches between two threads.
struct Mailbox {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::vector<void*>> q;
  static constexpr size_t kMax = 64;
  void put(std::vector<void*> b) {
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return q.size() < kMax; });
    q.push_back(std::move(b));
    cv.notify_all();
  }
  bool try_get(std::vector<void*>& out) {
    std::lock_guard<std::mutex> lk(m);
    if (q.empty()) return false;
    out = std::move(q.front());
    q.pop_front();
    cv.notify_all();
    return true;
  }
  std::vector<void*> get() {
    std::unique_lock<std::mutex> lk(m);
    cv.wait(lk, [&] { return !q.empty(); });
    auto b = std::move(q.front());
    q.pop_front();
    cv.notify_all();
    return b;
  }
};

uint64_t run_xthread(unsigned scale) {
  const unsigned n = std::max(2u, hw_threads());
  const unsigned batches = 40000 * scale;
  constexpr unsigned kBatch = 256;
  std::vector<Mailbox> boxes(n);  // box[i]: from thread i to thread i+1
  std::vector<uint64_t> sums(n, 0);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      Rng rng(0x7E4EAD00u + t);
      Mailbox& out = boxes[t];
      Mailbox& in = boxes[(t + n - 1) % n];
      unsigned received = 0;
      std::vector<void*> got;
      for (unsigned b = 0; b < batches; ++b) {
        std::vector<void*> batch(kBatch);
        for (auto& p : batch) {
          uint32_t sz = small_size(rng);
          p = std::malloc(sz);
          std::memset(p, int(t), std::min<uint32_t>(sz, 32));
        }
        out.put(std::move(batch));
        while (in.try_get(got)) {
          for (void* p : got) {
            sums[t] += static_cast<unsigned char*>(p)[0];
            std::free(p);
          }
          ++received;
        }
      }
      while (received < batches) {
        got = in.get();
        for (void* p : got) {
          sums[t] += static_cast<unsigned char*>(p)[0];
          std::free(p);
        }
        ++received;
      }
    });
  }
  for (auto& th : threads) th.join();
  uint64_t sum = 0;
  for (uint64_t s : sums) sum += s;
  return sum;
}

uint64_t run_burst(unsigned scale) {
  Rng rng(0xB0257000u);
  std::vector<void*> survivors;
  uint64_t sum = 0;
  for (unsigned phase = 0; phase < 12 * scale; ++phase) {
    // Each phase favours a different part of the size range.
    const uint32_t base = 16u << (phase % 5);  // 16 .. 256
    std::vector<void*> blocks(400000);
    for (auto& p : blocks) {
      uint32_t sz = base + rng.below(base);
      p = std::malloc(sz);
      static_cast<char*>(p)[0] = char(phase);
      static_cast<char*>(p)[sz - 1] = char(phase);
    }
    for (auto& p : blocks) {
      if (rng.below(10) == 0) {
        survivors.push_back(p);
      } else {
        sum += static_cast<unsigned char*>(p)[0];
        std::free(p);
      }
    }
    // Survivors of old phases die off slowly.
    if (survivors.size() > 200000) {
      for (size_t i = 0; i < survivors.size(); i += 2) std::free(survivors[i]);
      size_t j = 0;
      for (size_t i = 1; i < survivors.size(); i += 2) survivors[j++] = survivors[i];
      survivors.resize(j);
    }
  }
  for (void* p : survivors) std::free(p);
  return sum;
}

uint64_t run_mixed(unsigned scale) {
  constexpr unsigned kThreads = 2;
  std::vector<uint64_t> sums(kThreads, 0);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Rng rng(0x313ED000u + t);
      constexpr size_t kLive = 20000;
      std::vector<void*> live(kLive, nullptr);
      std::vector<uint32_t> sizes(kLive, 0);
      const unsigned ops = 8000000 * scale;
      for (unsigned i = 0; i < ops; ++i) {
        uint32_t k = rng.below(kLive);
        if (live[k] != nullptr) {
          sums[t] += static_cast<unsigned char*>(live[k])[sizes[k] - 1];
          std::free(live[k]);
        }
        uint32_t r = rng.below(1000);
        uint32_t sz = r < 900   ? 8 + rng.below(120)
                      : r < 990 ? 128 + rng.below(3968)
                                : 4096 + rng.below(61440);
        char* p = static_cast<char*>(std::malloc(sz));
        p[0] = char(i);
        p[sz - 1] = char(i >> 8);
        live[k] = p;
        sizes[k] = sz;
      }
      for (void* p : live) std::free(p);
    });
  }
  for (auto& th : threads) th.join();
  uint64_t sum = 0;
  for (uint64_t s : sums) sum += s;
  return sum;
}

[[noreturn]] void usage() {
  std::fprintf(stderr, "usage: am_workload stl|xthread|burst|mixed [SCALE]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) usage();
  unsigned scale = 1;
  if (argc == 3) {
    long s = std::strtol(argv[2], nullptr, 10);
    if (s < 1 || s > 1000) usage();
    scale = unsigned(s);
  }
  const std::string mode = argv[1];
  uint64_t sum;
  if (mode == "stl") {
    sum = run_stl(scale);
  } else if (mode == "xthread") {
    sum = run_xthread(scale);
  } else if (mode == "burst") {
    sum = run_burst(scale);
  } else if (mode == "mixed") {
    sum = run_mixed(scale);
  } else {
    usage();
  }
  std::printf("%s checksum %llu\n", mode.c_str(), static_cast<unsigned long long>(sum));
  return 0;
}
