// Shared by the meshing tests (mesh_test.cpp, mesh_fork_test.cpp): sparse
// pages made on purpose, a mesh pass, checks of every block's bytes, and
// the memory and mapping figures the scenarios print.
#pragma once
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "amalloc/amalloc.h"
#include "amalloc_test_support.h"
#include "gtest/gtest.h"

namespace meshtest {

using namespace std::chrono_literals;

// Medium blocks: 42 to a 512 KiB page; small blocks: 32 to a 64 KiB page.
constexpr std::size_t kMedium = 12288, kMediumPerPage = 42, kMediumPages = 48;
constexpr std::size_t kSmall = 2048, kSmallPerPage = 32, kSmallPages = 30;
constexpr std::size_t kMediumBlocks = kMediumPages * kMediumPerPage;  // 2016
constexpr std::size_t kSmallBlocks = kSmallPages * kSmallPerPage;     // 960
constexpr std::uint64_t kSmallSeeds = 1 << 20;  // small blocks' seeds start here
constexpr unsigned kKeepPercent = 10;

struct Block {
  unsigned char* p;
  std::size_t n;
  std::uint64_t seed;  // the block holds amt::fill_pattern(p, n, seed)
};

// Appends `count` blocks of `size` bytes to `all`, block i filled with the
// pattern of seed seed_base + i.
inline void allocate_blocks(std::size_t size, std::size_t count, std::uint64_t seed_base,
                            std::vector<Block>& all) {
  for (std::size_t i = 0; i < count; i++) {
    auto* p = static_cast<unsigned char*>(am_malloc(size));
    if (!p) {
      std::printf("FAIL am_malloc(%zu) returned NULL\n", size);
      std::exit(20);
    }
    amt::fill_pattern(p, size, seed_base + i);
    all.push_back({p, size, seed_base + i});
  }
}

// Frees a random 90% of `all`: sparse pages whose live blocks lie at
// random offsets. Returns the rest. Every block is allocated before the
// first free: a slow path may run a mesh pass (at most every 20 ms), and
// one during the set-up would merge pages before the test looks.
inline std::vector<Block> keep_some(const std::vector<Block>& all, amt::Rng& rng) {
  std::vector<Block> kept;
  kept.reserve(all.size() * kKeepPercent / 50);
  for (const Block& b : all)
    if (rng.chance(kKeepPercent))
      kept.push_back(b);
    else
      am_free(b.p);
  return kept;
}

// The set-up of every case: 48 medium pages (and, with `small`, 30 small
// pages) at about 10% full. The seed is fixed: the same blocks are kept in
// every run (where in its page each block lies is random by design).
inline std::vector<Block> make_sparse(bool small) {
  amt::Rng rng(20240611);
  std::vector<Block> all;
  all.reserve(kMediumBlocks + kSmallBlocks);
  allocate_blocks(kMedium, kMediumBlocks, 0, all);
  if (small) allocate_blocks(kSmall, kSmallBlocks, kSmallSeeds, all);
  return keep_some(all, rng);
}

// A mesh pass runs on every am_collect(0) of the owning thread; a later
// pass can still pair pages the first one left alone.
inline void mesh() {
  for (int i = 0; i < 3; i++) am_collect(0);
}

// Checks every block against the pattern of its seed + `delta`; prints the
// first bad one and returns how many are bad.
inline std::size_t bad_blocks(const std::vector<Block>& v, std::uint64_t delta, const char* when) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < v.size(); i++) {
    std::size_t at = amt::check_pattern(v[i].p, v[i].n, v[i].seed + delta);
    if (at == SIZE_MAX) continue;
    if (bad++ == 0)
      std::printf("BAD_BLOCK %s: block %zu of %zu (%p, %zu bytes) differs at offset %zu\n", when, i,
                  v.size(), static_cast<void*>(v[i].p), v[i].n, at);
  }
  return bad;
}

// Pss of this process in KiB: a physical page mapped at k addresses counts
// 1/k at each, so it counts once in the sum. (statm's RSS counts it at
// every address: after meshing, two virtual pages share one physical page
// and RSS counts it twice -- Pss is the honest figure.) -1 if unreadable.
inline long pss_kb() {
  std::ifstream rollup("/proc/self/smaps_rollup");
  std::string line;
  while (std::getline(rollup, line))
    if (line.compare(0, 4, "Pss:") == 0) return std::atol(line.c_str() + 4);
  // Kernels before 4.14: add up the mappings.
  std::ifstream smaps("/proc/self/smaps");
  long sum = -1;
  while (std::getline(smaps, line))
    if (line.compare(0, 4, "Pss:") == 0) sum = (sum < 0 ? 0 : sum) + std::atol(line.c_str() + 4);
  return sum;
}

// The mappings of amalloc's memory file ("/memfd:amalloc"). Every page
// slot is mapped at the file offset equal to its address (filemap.h), so a
// mapping whose offset differs from its address is a page merged onto
// another page's memory: [off, off + (hi - lo)) is that page's memory.
struct Vma {
  std::uintptr_t lo, hi, off;
  bool away() const { return off != lo; }
};

inline std::vector<Vma> memfd_mappings() {
  std::vector<Vma> v;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find("memfd:amalloc") == std::string::npos) continue;
    unsigned long long lo = 0, hi = 0, off = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx %*s %llx", &lo, &hi, &off) == 3)
      v.push_back({static_cast<std::uintptr_t>(lo), static_cast<std::uintptr_t>(hi),
                   static_cast<std::uintptr_t>(off)});
  }
  return v;
}

inline const Vma* mapping_of(const std::vector<Vma>& maps, const void* p) {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  for (const Vma& m : maps)
    if (a >= m.lo && a < m.hi) return &m;
  return nullptr;
}

// A block in a page that was merged onto another page's memory.
inline bool meshed_away(const std::vector<Vma>& maps, const void* p) {
  const Vma* m = mapping_of(maps, p);
  return m && m->away();
}

// A block in a page whose memory other pages were merged onto.
inline bool meshed_primary(const std::vector<Vma>& maps, const void* p) {
  const Vma* m = mapping_of(maps, p);
  if (!m || m->away()) return false;
  auto a = reinterpret_cast<std::uintptr_t>(p);
  for (const Vma& o : maps)
    if (o.away() && a >= o.off && a < o.off + (o.hi - o.lo)) return true;
  return false;
}

inline std::size_t count_away(const std::vector<Block>& v) {
  std::vector<Vma> maps = memfd_mappings();
  std::size_t n = 0;
  for (const Block& b : v) n += meshed_away(maps, b.p);
  return n;
}

inline unsigned long long u(std::uint64_t x) { return static_cast<unsigned long long>(x); }

// Prints "MERGES n" and "MESHED n" (the mesh counters now).
inline am_stats_t print_mesh_stats() {
  am_stats_t s = amt::stats();
  std::printf("MERGES %llu\nMESHED %llu\n", u(s.mesh_merges), u(s.meshed_pages));
  return s;
}

// Frees every block and runs a pass; returns the pages still meshed (every
// group must have gone back: 0).
inline std::uint64_t free_all(std::vector<Block>& v) {
  for (const Block& b : v) am_free(b.p);
  v.clear();
  mesh();
  return amt::stats().meshed_pages;
}

using amt::value_of;

// A sanitizer that keeps its own SIGSEGV handler leaves amalloc no way to
// hold a page while it copies it, and then nothing meshes. Not so in a
// normal build: there no merge is a failure.
inline bool unmeshed_under_sanitizer(const amt::ChildResult& c) {
  return AMT_SANITIZED && value_of(c.out, "MERGES") == 0;
}
constexpr const char* kNoMeshUnderSanitizer =
    "nothing meshed: the sanitizer did not let amalloc install its SIGSEGV handler";

inline const std::vector<std::pair<std::string, std::string>> kEnv = {{"AMALLOC_MESH", "1"},
                                                                      {"AMALLOC_BACKGROUND", "0"}};

}  // namespace meshtest
