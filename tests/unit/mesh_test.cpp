// Meshing (AMALLOC_MESH=1): sparse pages of one size class whose live
// blocks sit at different offsets are merged onto one physical page. These
// cases check what the program must never notice -- every block keeps its
// address and its bytes through the merge, through a thread writing into
// the pages while they are copied, through frees from other threads, a
// double free and a fork() -- and what meshing is for: the merged pages'
// memory goes back to the OS (measured as Pss, see pss_kb). Options are
// read once per process, so each case runs as a scenario in a fresh copy of
// this program, without the background worker: the mesh passes run where
// the scenario calls am_collect(0).
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

namespace {

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
void allocate_blocks(std::size_t size, std::size_t count, std::uint64_t seed_base,
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
std::vector<Block> keep_some(const std::vector<Block>& all, amt::Rng& rng) {
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
std::vector<Block> make_sparse(bool small) {
  amt::Rng rng(20240611);
  std::vector<Block> all;
  all.reserve(kMediumBlocks + kSmallBlocks);
  allocate_blocks(kMedium, kMediumBlocks, 0, all);
  if (small) allocate_blocks(kSmall, kSmallBlocks, kSmallSeeds, all);
  return keep_some(all, rng);
}

// A mesh pass runs on every am_collect(0) of the owning thread; a later
// pass can still pair pages the first one left alone.
void mesh() {
  for (int i = 0; i < 3; i++) am_collect(0);
}

// Checks every block against the pattern of its seed + `delta`; prints the
// first bad one and returns how many are bad.
std::size_t bad_blocks(const std::vector<Block>& v, std::uint64_t delta, const char* when) {
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
long pss_kb() {
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

std::vector<Vma> memfd_mappings() {
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

const Vma* mapping_of(const std::vector<Vma>& maps, const void* p) {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  for (const Vma& m : maps)
    if (a >= m.lo && a < m.hi) return &m;
  return nullptr;
}

// A block in a page that was merged onto another page's memory.
bool meshed_away(const std::vector<Vma>& maps, const void* p) {
  const Vma* m = mapping_of(maps, p);
  return m && m->away();
}

// A block in a page whose memory other pages were merged onto.
bool meshed_primary(const std::vector<Vma>& maps, const void* p) {
  const Vma* m = mapping_of(maps, p);
  if (!m || m->away()) return false;
  auto a = reinterpret_cast<std::uintptr_t>(p);
  for (const Vma& o : maps)
    if (o.away() && a >= o.off && a < o.off + (o.hi - o.lo)) return true;
  return false;
}

std::size_t count_away(const std::vector<Block>& v) {
  std::vector<Vma> maps = memfd_mappings();
  std::size_t n = 0;
  for (const Block& b : v) n += meshed_away(maps, b.p);
  return n;
}

unsigned long long u(std::uint64_t x) { return static_cast<unsigned long long>(x); }

// Prints "MERGES n" and "MESHED n" (the mesh counters now).
am_stats_t print_mesh_stats() {
  am_stats_t s = amt::stats();
  std::printf("MERGES %llu\nMESHED %llu\n", u(s.mesh_merges), u(s.meshed_pages));
  return s;
}

// Frees every block and runs a pass; returns the pages still meshed (every
// group must have gone back: 0).
std::uint64_t free_all(std::vector<Block>& v) {
  for (const Block& b : v) am_free(b.p);
  v.clear();
  mesh();
  return amt::stats().meshed_pages;
}

// The value printed as "KEY value" at the start of a line of `out`, or -1.
long long value_of(const std::string& out, const std::string& key) {
  std::istringstream is(out);
  std::string line;
  while (std::getline(is, line))
    if (line.compare(0, key.size() + 1, key + " ") == 0)
      return std::atoll(line.c_str() + key.size() + 1);
  return -1;
}

// A sanitizer that keeps its own SIGSEGV handler leaves amalloc no way to
// hold a page while it copies it, and then nothing meshes. Not so in a
// normal build: there no merge is a failure.
bool unmeshed_under_sanitizer(const amt::ChildResult& c) {
  return AMT_SANITIZED && value_of(c.out, "MERGES") == 0;
}
constexpr const char* kNoMeshUnderSanitizer =
    "nothing meshed: the sanitizer did not let amalloc install its SIGSEGV handler";

const std::vector<std::pair<std::string, std::string>> kEnv = {{"AMALLOC_MESH", "1"},
                                                               {"AMALLOC_BACKGROUND", "0"}};

}  // namespace

// ---- contents, addresses and memory ------------------------------------------

AMT_SCENARIO(mesh_keeps_blocks) {
  std::vector<Block> kept = make_sparse(true);
  std::size_t medium_kept = static_cast<std::size_t>(
      std::count_if(kept.begin(), kept.end(), [](const Block& b) { return b.n == kMedium; }));
  long pss_before = pss_kb();
  std::size_t rss_before = amt::rss_bytes();
  std::printf("MERGES_BEFORE %llu\n", u(amt::stats().mesh_merges));
  mesh();
  print_mesh_stats();
  std::printf("KEPT %zu\nMEDIUM_KEPT %zu\nAWAY %zu\n", kept.size(), medium_kept, count_away(kept));
  // Every byte of every kept block, at its old address (this touches them
  // all: nothing of them may have been left unmapped).
  std::printf("BAD %zu\n", bad_blocks(kept, 0, "after meshing"));
  long pss_after = pss_kb();
  std::size_t rss_after = amt::rss_bytes();
  std::printf("PSS_BEFORE_KB %ld\nPSS_AFTER_KB %ld\nRSS_BEFORE_KB %zu\nRSS_AFTER_KB %zu\n",
              pss_before, pss_after, rss_before / 1024, rss_after / 1024);
  std::printf("MESHED_AFTER_FREE %llu\n", u(free_all(kept)));
  return 0;
}

TEST(Mesh, KeepsEveryBlockAtItsAddressAndGivesMemoryBack) {
  auto c = amt::run_scenario("mesh_keeps_blocks", kEnv);
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  if (unmeshed_under_sanitizer(c)) GTEST_SKIP() << kNoMeshUnderSanitizer;
  EXPECT_GT(value_of(c.out, "MERGES"), 0) << "no page was merged\n" << c.describe();
  EXPECT_GT(value_of(c.out, "MESHED"), 0) << c.describe();
  EXPECT_GT(value_of(c.out, "AWAY"), 0)
      << "no kept block lies in a page pointed at another page's memory\n"
      << c.describe();
  EXPECT_EQ(value_of(c.out, "BAD"), 0) << "kept blocks changed\n" << c.describe();
  EXPECT_EQ(value_of(c.out, "MESHED_AFTER_FREE"), 0)
      << "groups stayed meshed after all their blocks were freed\n"
      << c.describe();
  if (AMT_SANITIZED) return;  // shadow memory makes Pss figures meaningless
  // The 48 sparse medium pages held 24 MiB; at 10% full they fit in a few
  // pages, so a quarter of it at least must be gone (Pss, see pss_kb).
  const long bound = static_cast<long>(kMediumPages * 512 / 4);
  long before = value_of(c.out, "PSS_BEFORE_KB"), after = value_of(c.out, "PSS_AFTER_KB");
  ASSERT_GT(before, 0) << "no Pss figure\n" << c.describe();
  ASSERT_EQ(value_of(c.out, "MERGES_BEFORE"), 0)
      << "pages were merged before the first figure was taken\n"
      << c.describe();
  std::printf("%lld merges; Pss %ld -> %ld KiB (statm RSS %lld -> %lld KiB)\n",
              value_of(c.out, "MERGES"), before, after, value_of(c.out, "RSS_BEFORE_KB"),
              value_of(c.out, "RSS_AFTER_KB"));
  EXPECT_GE(before - after, bound)
      << "Pss fell by " << before - after << " KiB (" << before << " -> " << after
      << "), expected at least " << bound << " KiB\n"
      << c.describe();
}

// ---- frees from other threads ------------------------------------------------

AMT_SCENARIO(mesh_remote_frees) {
  std::uint64_t committed_before = amt::stats().committed_bytes;
  std::vector<Block> kept = make_sparse(false);
  mesh();
  print_mesh_stats();
  std::atomic<std::size_t> bad{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 4; t++)
    threads.emplace_back([&kept, &bad, t] {
      std::vector<Block> mine;
      for (std::size_t i = t; i < kept.size(); i += 4) mine.push_back(kept[i]);
      bad += bad_blocks(mine, 0, "in the freeing thread");
      for (const Block& b : mine) am_free(b.p);
    });
  for (auto& th : threads) th.join();
  kept.clear();
  // The last free of a group gives it back, whichever thread makes it.
  std::printf("MESHED_AFTER_JOIN %llu\n", u(amt::stats().meshed_pages));
  am_collect(0);
  std::printf(
      "BAD %zu\nMESHED_AFTER_FREE %llu\nCOMMITTED_BEFORE_KB %llu\nCOMMITTED_AFTER_KB %llu\n",
      bad.load(), u(amt::stats().meshed_pages), u(committed_before / 1024),
      u(amt::stats().committed_bytes / 1024));
  return 0;
}

TEST(Mesh, FreesFromOtherThreadsReleaseTheGroups) {
  // With a purge delay, pages freed into a segment that became empty count
  // as committed until the delay has passed: that is the purge's business.
  // Without it, what the frees gave back shows at once.
  auto env = kEnv;
  env.emplace_back("AMALLOC_PURGE_DELAY", "0");
  auto c = amt::run_scenario("mesh_remote_frees", env);
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  if (unmeshed_under_sanitizer(c)) GTEST_SKIP() << kNoMeshUnderSanitizer;
  EXPECT_GT(value_of(c.out, "MERGES"), 0) << "no page was merged\n" << c.describe();
  EXPECT_EQ(value_of(c.out, "BAD"), 0) << "kept blocks changed\n" << c.describe();
  EXPECT_EQ(value_of(c.out, "MESHED_AFTER_JOIN"), 0)
      << "groups stayed meshed after other threads freed all their blocks\n"
      << c.describe();
  EXPECT_EQ(value_of(c.out, "MESHED_AFTER_FREE"), 0)
      << "groups stayed meshed after the owner's pass\n"
      << c.describe();
  long long before = value_of(c.out, "COMMITTED_BEFORE_KB");
  long long after = value_of(c.out, "COMMITTED_AFTER_KB");
  ASSERT_GE(before, 0) << c.describe();
  EXPECT_LE(after, before + 4 * 1024)
      << "committed bytes did not come back (KiB: " << before << " -> " << after << ")\n"
      << c.describe();
}

// ---- a thread writing while pages are copied -----------------------------------

namespace {

struct RaceTotals {
  std::uint64_t mismatches = 0;              // counts the writer read back wrong
  std::uint64_t bad = 0;                     // blocks wrong at the end of a round
  std::uint64_t passes = 0;                  // the writer's passes over all blocks
  std::uint64_t longest_us = 0;              // its longest single block update
  std::uint64_t fewest_merges = UINT64_MAX;  // merges in the round that made fewest
  std::uint64_t meshed_after_free = 0;
};

// One round: fresh sparse medium pages; a writer thread keeps bumping a
// counter at both ends of every kept block (each block has its own count)
// while this thread runs mesh passes. A write to a page being copied faults
// and waits, then lands in the merged memory: a write lost in the copy
// shows as a count that went back.
void racing_round(std::uint64_t round, amt::Rng& rng, RaceTotals& tot) {
  std::vector<Block> all;
  all.reserve(kMediumBlocks);
  allocate_blocks(kMedium, kMediumBlocks, round << 32, all);
  std::vector<Block> kept = keep_some(all, rng);
  for (const Block& b : kept) {  // the counters start at 0; the pattern stays between them
    std::memset(b.p, 0, 8);
    std::memset(b.p + b.n - 8, 0, 8);
  }
  const std::uint64_t merges_before = amt::stats().mesh_merges;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> done{0};
  std::vector<std::uint64_t> expect(kept.size(), 0);
  std::thread writer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      for (std::size_t i = 0; i < kept.size(); i++) {
        const auto t0 = std::chrono::steady_clock::now();
        std::atomic_ref<std::uint64_t> head(*reinterpret_cast<std::uint64_t*>(kept[i].p));
        std::atomic_ref<std::uint64_t> tail(
            *reinterpret_cast<std::uint64_t*>(kept[i].p + kept[i].n - 8));
        std::uint64_t h = head.load(std::memory_order_relaxed);
        std::uint64_t t = tail.load(std::memory_order_relaxed);
        if ((h != expect[i] || t != expect[i]) && tot.mismatches++ == 0)
          std::printf("MISMATCH round %llu block %zu (%p): head %llu tail %llu, expected %llu\n",
                      u(round), i, static_cast<void*>(kept[i].p), u(h), u(t), u(expect[i]));
        expect[i]++;
        head.store(expect[i], std::memory_order_relaxed);
        tail.store(expect[i], std::memory_order_relaxed);
        auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - t0)
                      .count();
        tot.longest_us = std::max(tot.longest_us, static_cast<std::uint64_t>(us));
      }
      done.fetch_add(1, std::memory_order_relaxed);
    }
  });
  while (done.load(std::memory_order_relaxed) < 2) std::this_thread::yield();
  const auto until = std::chrono::steady_clock::now() + 75ms;
  while (std::chrono::steady_clock::now() < until) {
    am_collect(0);
    std::this_thread::sleep_for(1ms);
  }
  stop.store(true);
  writer.join();
  tot.passes += done.load();
  tot.fewest_merges = std::min(tot.fewest_merges, amt::stats().mesh_merges - merges_before);
  // The last counts, and every byte between them.
  std::vector<unsigned char> want(kMedium);
  for (std::size_t i = 0; i < kept.size(); i++) {
    const Block& b = kept[i];
    std::uint64_t h, t;
    std::memcpy(&h, b.p, 8);
    std::memcpy(&t, b.p + b.n - 8, 8);
    amt::fill_pattern(want.data(), b.n, b.seed);
    bool middle = std::memcmp(b.p + 8, want.data() + 8, b.n - 16) == 0;
    if ((h != expect[i] || t != expect[i] || !middle) && tot.bad++ == 0)
      std::printf("BAD_BLOCK round %llu block %zu (%p): head %llu tail %llu, expected %llu%s\n",
                  u(round), i, static_cast<void*>(b.p), u(h), u(t), u(expect[i]),
                  middle ? "" : "; the bytes between them changed");
  }
  tot.meshed_after_free += free_all(kept);
}

}  // namespace

AMT_SCENARIO(mesh_racing_writer) {
  // Four rounds of 75 ms of passes: groups are made, and released again,
  // while the writer runs.
  amt::Rng rng(99);
  RaceTotals tot;
  for (std::uint64_t round = 1; round <= 4; round++) racing_round(round, rng, tot);
  print_mesh_stats();
  std::printf("MISMATCHES %llu\nBAD %llu\nWRITER_PASSES %llu\nLONGEST_UPDATE_US %llu\n",
              u(tot.mismatches), u(tot.bad), u(tot.passes), u(tot.longest_us));
  std::printf("MESHED_AFTER_FREE %llu\nFEWEST_ROUND_MERGES %llu\n", u(tot.meshed_after_free),
              u(tot.fewest_merges));
  // amalloc's fault handler must still be there: a hold fault it passed on
  // as a real one would have put back the default action (and every later
  // merge would be refused, or a later hold fault kill the process).
  struct sigaction cur;
  sigaction(SIGSEGV, nullptr, &cur);
  std::printf("SEGV_HANDLER %d\n", (cur.sa_flags & SA_SIGINFO) ? 1 : 0);
  return 0;
}

TEST(Mesh, WritesDuringTheCopyAreNotLost) {
  auto env = kEnv;
  // ThreadSanitizer cannot see the order the page protection makes (the
  // writer's stores wait in the fault handler while the copy reads) and
  // reports the copy as a race with them: its reports are off here; the
  // counts still tell whether a write was lost.
  if (AMT_TSAN) env.emplace_back("TSAN_OPTIONS", "report_bugs=0");
  auto c = amt::run_scenario("mesh_racing_writer", env);
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  if (unmeshed_under_sanitizer(c)) GTEST_SKIP() << kNoMeshUnderSanitizer;
  EXPECT_GT(value_of(c.out, "MERGES"), 0) << "no page was merged\n" << c.describe();
  EXPECT_EQ(value_of(c.out, "MISMATCHES"), 0)
      << "the writer read back a count it had not written: a write was lost\n"
      << c.describe();
  EXPECT_EQ(value_of(c.out, "BAD"), 0) << c.describe();
  EXPECT_EQ(value_of(c.out, "MESHED_AFTER_FREE"), 0) << c.describe();
  EXPECT_GT(value_of(c.out, "FEWEST_ROUND_MERGES"), 0)
      << "a round's 48 sparse pages were not meshed: meshing stopped\n"
      << c.describe();
  EXPECT_EQ(value_of(c.out, "SEGV_HANDLER"), 1)
      << "amalloc's SIGSEGV handler is gone after the writer's faults\n"
      << c.describe();
}

// ---- fork() ------------------------------------------------------------------

namespace {

constexpr std::uint64_t kChildSeeds = 1000000;    // what the child writes
constexpr std::uint64_t kParentSeeds = 2000000;   // the parent's first writes
constexpr std::uint64_t kParentSeeds2 = 3000000;  // its writes after the child

// The child: it must see the heap as it was at the fork, whatever the
// parent writes after it; then it writes, frees and meshes on its own.
int fork_child(std::vector<Block>& kept, int go) {
  char ch;
  if (read(go, &ch, 1) != 1) return 9;  // the parent has written its blocks
  if (bad_blocks(kept, 0, "child, at the fork")) return 10;
  for (const Block& b : kept) amt::fill_pattern(b.p, b.n, b.seed + kChildSeeds);
  if (bad_blocks(kept, kChildSeeds, "child, its own writes")) return 11;
  std::vector<Block> rest;
  for (std::size_t i = 0; i < kept.size(); i++)
    if (i % 2)
      rest.push_back(kept[i]);
    else
      am_free(kept[i].p);
  am_collect(0);
  if (bad_blocks(rest, kChildSeeds, "child, after freeing half")) return 12;
  for (const Block& b : rest) am_free(b.p);
  am_collect(0);
  return 0;
}

// `bytes` of mixed sizes, each block checked after the others were made.
std::size_t fresh_allocations(std::size_t bytes) {
  static const std::size_t kSizes[] = {48, 700, kSmall, 5000, kMedium, 40000};
  std::vector<Block> v;
  amt::Rng rng(5);
  for (std::size_t total = 0; total < bytes;) {
    std::size_t n = kSizes[rng.below(std::size(kSizes))];
    auto* p = static_cast<unsigned char*>(am_malloc(n));
    if (!p) return SIZE_MAX;
    amt::fill_pattern(p, n, 7000000 + v.size());
    v.push_back({p, n, 7000000 + v.size()});
    total += n;
  }
  std::size_t bad = bad_blocks(v, 0, "parent, new blocks after the fork");
  for (const Block& b : v) am_free(b.p);
  return bad;
}

}  // namespace

AMT_SCENARIO(mesh_fork) {
  std::vector<Block> kept = make_sparse(true);
  mesh();
  print_mesh_stats();
  std::printf("AWAY %zu\n", count_away(kept));
  int go[2];
  if (pipe(go) != 0) return 3;
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return 4;
  if (pid == 0) {
    close(go[1]);
    int code = fork_child(kept, go[0]);
    std::fflush(stdout);
    _exit(code);
  }
  close(go[0]);
  // Before the child looks: new data in the small blocks (it must not see it).
  for (const Block& b : kept)
    if (b.n == kSmall) amt::fill_pattern(b.p, b.n, b.seed + kParentSeeds);
  if (write(go[1], "x", 1) != 1) return 5;
  close(go[1]);
  int status = 0;
  waitpid(pid, &status, 0);
  std::printf("CHILD %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status));
  // The child's writes must not show here: medium blocks still hold the
  // pattern of the fork, small ones what this process wrote.
  std::vector<Block> medium, small;
  for (const Block& b : kept) (b.n == kMedium ? medium : small).push_back(b);
  std::size_t bad = bad_blocks(medium, 0, "parent, after the child wrote") +
                    bad_blocks(small, kParentSeeds, "parent, its writes after the fork");
  std::printf("PARENT_BAD %zu\n", bad);
  for (const Block& b : kept) amt::fill_pattern(b.p, b.n, b.seed + kParentSeeds2);
  std::printf("PARENT_REWRITE_BAD %zu\n", bad_blocks(kept, kParentSeeds2, "parent, rewritten"));
  std::printf("MESHED_AFTER_FREE %llu\n", u(free_all(kept)));
  std::printf("FRESH_BAD %zu\n", fresh_allocations(8u << 20));
  return 0;
}

TEST(Mesh, ForkGivesTheChildItsOwnCopyOfMeshedPages) {
  auto c = amt::run_scenario("mesh_fork", kEnv);
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  if (unmeshed_under_sanitizer(c)) GTEST_SKIP() << kNoMeshUnderSanitizer;
  EXPECT_GT(value_of(c.out, "MERGES"), 0) << "no page was merged\n" << c.describe();
  EXPECT_GT(value_of(c.out, "AWAY"), 0) << c.describe();
  EXPECT_EQ(value_of(c.out, "CHILD"), 0)
      << "the child: 10 = blocks differ at the fork (or the parent's later writes reached it), "
         "11 = its own writes did not stick, 12 = blocks changed after it freed half, "
         "100 + n = killed by signal n\n"
      << c.describe();
  EXPECT_EQ(value_of(c.out, "PARENT_BAD"), 0)
      << "the child's writes reached the parent (or the parent's own were lost)\n"
      << c.describe();
  EXPECT_EQ(value_of(c.out, "PARENT_REWRITE_BAD"), 0) << c.describe();
  EXPECT_EQ(value_of(c.out, "MESHED_AFTER_FREE"), 0) << c.describe();
  EXPECT_EQ(value_of(c.out, "FRESH_BAD"), 0) << "allocating after the fork went wrong\n"
                                             << c.describe();
}

// ---- a double free -------------------------------------------------------------

AMT_SCENARIO(mesh_double_free) {
  std::vector<Block> kept = make_sparse(false);
  mesh();
  print_mesh_stats();
  // One block of a page merged onto another's memory, and one of a page
  // others were merged onto: each freed twice.
  std::vector<Vma> maps = memfd_mappings();
  std::size_t away = SIZE_MAX, primary = SIZE_MAX;
  for (std::size_t i = 0; i < kept.size(); i++) {
    if (away == SIZE_MAX && meshed_away(maps, kept[i].p)) away = i;
    if (primary == SIZE_MAX && meshed_primary(maps, kept[i].p)) primary = i;
  }
  std::printf("AWAY_BLOCK %d\nPRIMARY_BLOCK %d\n", away != SIZE_MAX, primary != SIZE_MAX);
  if (away == SIZE_MAX || primary == SIZE_MAX) return 0;
  std::uint64_t bad_before = amt::stats().bad_frees;
  for (std::size_t i : {away, primary}) {
    std::printf("DOUBLE_FREE %p\n", static_cast<void*>(kept[i].p));
    std::fflush(stdout);
    am_free(kept[i].p);
    am_free(kept[i].p);  // reported and ignored
  }
  std::printf("BAD_FREES %llu\n", u(amt::stats().bad_frees - bad_before));
  kept.erase(kept.begin() + static_cast<std::ptrdiff_t>(std::max(away, primary)));
  kept.erase(kept.begin() + static_cast<std::ptrdiff_t>(std::min(away, primary)));
  std::printf("BAD %zu\n", bad_blocks(kept, 0, "after the double frees"));
  std::printf("MESHED_AFTER_FREE %llu\n", u(free_all(kept)));
  return 0;
}

TEST(Mesh, DoubleFreeOfAMeshedBlockIsReportedAndIgnored) {
  auto env = kEnv;
  env.emplace_back("AMALLOC_BAD_FREE", "report");
  auto c = amt::run_scenario("mesh_double_free", env);
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  if (unmeshed_under_sanitizer(c)) GTEST_SKIP() << kNoMeshUnderSanitizer;
  EXPECT_GT(value_of(c.out, "MERGES"), 0) << "no page was merged\n" << c.describe();
  ASSERT_EQ(value_of(c.out, "AWAY_BLOCK"), 1) << "no kept block in a page merged onto another\n"
                                              << c.describe();
  ASSERT_EQ(value_of(c.out, "PRIMARY_BLOCK"), 1)
      << "no kept block in a page others were merged onto\n"
      << c.describe();
  EXPECT_EQ(amt::lines_containing(c.err, "free()").size(), 2u)
      << "expected one report for each second free\n"
      << c.describe();
  // Each report names the block that was freed twice.
  std::vector<std::uintptr_t> freed;
  for (const std::string& line : amt::lines_containing(c.out, "DOUBLE_FREE"))
    for (std::uintptr_t a : amt::hex_numbers(line)) freed.push_back(a);
  for (std::uintptr_t a : freed) {
    char hex[32];
    std::snprintf(hex, sizeof hex, "%" PRIxPTR, a);
    EXPECT_NE(c.err.find(hex), std::string::npos) << "no report names 0x" << hex << "\n"
                                                  << c.describe();
  }
  EXPECT_EQ(value_of(c.out, "BAD_FREES"), 2) << c.describe();
  EXPECT_EQ(value_of(c.out, "BAD"), 0) << "other blocks changed\n" << c.describe();
  EXPECT_EQ(value_of(c.out, "MESHED_AFTER_FREE"), 0)
      << "groups stayed meshed after the rest was freed\n"
      << c.describe();
}

// fork() while another thread uses stdio, with meshed pages: fork's copy
// takes glibc's FILE list lock, and every child sees the blocks of the
// fork. (Here FILEs come from the system allocator; with them in amalloc's
// heap, the integration test fork_stdio checks that nothing hangs.)
AMT_SCENARIO(mesh_fork_with_stdio) {
  std::vector<Block> kept = make_sparse(false);
  mesh();
  print_mesh_stats();
  FILE* log = std::tmpfile();
  if (!log) return 3;
  std::atomic<bool> stop{false};
  std::thread io([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      if (FILE* f = std::fopen("/dev/null", "w")) {
        std::fputs("x", f);
        std::fclose(f);
      }
    }
  });
  int hung = 0, failed = 0;
  for (int i = 0; i < 40; i++) {
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) return 4;
    if (pid == 0) {
      std::fprintf(log, "child %d\n", i);
      _exit(bad_blocks(kept, 0, "child") == 0 && std::fflush(log) == 0 ? 0 : 1);
    }
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + 20s;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        hung++;
        break;
      }
      std::this_thread::sleep_for(1ms);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
  }
  stop = true;
  io.join();
  std::fclose(log);
  std::printf("HUNG %d\nFAILED %d\nPARENT_BAD %zu\n", hung, failed, bad_blocks(kept, 0, "parent"));
  free_all(kept);
  return 0;
}

TEST(Mesh, ForkWhileThreadsUseStdioDoesNotHang) {
  auto c = amt::run_scenario("mesh_fork_with_stdio", kEnv);
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(value_of(c.out, "HUNG"), 0) << "a fork child hung\n" << c.describe();
  EXPECT_EQ(value_of(c.out, "FAILED"), 0) << c.describe();
  EXPECT_EQ(value_of(c.out, "PARENT_BAD"), 0) << c.describe();
}

// amalloc's SIGSEGV handler (installed with the first page in the memory
// file) changes nothing a program sees of SIGSEGV: a raised one kills with
// the default action and is ignored under SIG_IGN.
AMT_SCENARIO(mesh_raised_sigsegv) {
  std::vector<Block> kept = make_sparse(false);
  mesh();
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    raise(SIGSEGV);
    _exit(0);  // survived: wrong
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::printf("DEFAULT_SIGNAL %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  signal(SIGSEGV, SIG_IGN);
  raise(SIGSEGV);
  std::printf("IGNORED_SURVIVED 1\n");
  free_all(kept);
  return 0;
}

TEST(Mesh, RaisedSigsegvKeepsItsDefaultAndIgnoredBehaviour) {
  auto c = amt::run_scenario("mesh_raised_sigsegv", kEnv);
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(value_of(c.out, "DEFAULT_SIGNAL"), SIGSEGV) << c.describe();
  EXPECT_EQ(value_of(c.out, "IGNORED_SURVIVED"), 1) << c.describe();
}
