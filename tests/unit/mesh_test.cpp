// Meshing (AMALLOC_MESH=1): sparse pages of one size class whose live
// blocks sit at different offsets are merged onto one physical page. These
// cases check what the program must never notice -- every block keeps its
// address and its bytes through the merge, through a thread writing into
// the pages while they are copied, through frees from other threads and a
// double free (fork(): mesh_fork_test.cpp) -- and what meshing is for: the merged pages'
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
#include "mesh_common.h"

using namespace meshtest;
using namespace std::chrono_literals;

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
  // The stats see frees into meshed pages (their live bitmaps, not the
  // `used` counts they had when they were merged).
  std::vector<Block> half, rest;
  for (std::size_t i = 0; i < kept.size(); i++) (i % 2 ? half : rest).push_back(kept[i]);
  std::uint64_t in_use_before = amt::stats().in_use_bytes, freed = 0;
  for (const Block& b : half) {
    am_free(b.p);
    freed += b.n;
  }
  std::uint64_t in_use_after = amt::stats().in_use_bytes;
  std::printf("IN_USE_DROP %llu\nFREED_BYTES %llu\n", u(in_use_before - in_use_after), u(freed));
  std::printf("MESHED_AFTER_FREE %llu\n", u(free_all(rest)));
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
  EXPECT_EQ(value_of(c.out, "IN_USE_DROP"), value_of(c.out, "FREED_BYTES")) << c.describe();
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
