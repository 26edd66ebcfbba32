// Invalid and double frees.
//
// Default (AMALLOC_BAD_FREE unset or "abort"): one line on stderr that
// names amalloc, the function (free) and the pointer in hex, then abort().
// AMALLOC_BAD_FREE=report: the same line, the free is ignored and the
// program goes on. Options are read once per process, so "report" runs in a
// child started with that environment (see amt::run_scenario).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "amalloc_test_support.h"

namespace {

char g_global_buffer[256];

// Checks the stderr of a process that did one bad free of the pointer it
// printed as "PTR=0x..." (on stderr for death tests, or passed in): exactly
// one line mentions amalloc, and it names free and that pointer.
std::string check_report(const std::string& err, std::uintptr_t ptr) {
  auto lines = amt::lines_containing(err, "amalloc");
  std::ostringstream why;
  if (lines.size() != 1) {
    why << "expected exactly one line containing \"amalloc\", got " << lines.size();
    return why.str();
  }
  const std::string& line = lines[0];
  if (line.find("free") == std::string::npos) {
    why << "the report does not name the function free: " << line;
    return why.str();
  }
  bool found = false;
  for (std::uintptr_t x : amt::hex_numbers(line)) found |= (x == ptr);
  if (!found) {
    why << "the report does not show the pointer 0x" << std::hex << ptr << ": " << line;
    return why.str();
  }
  return {};
}

std::uintptr_t ptr_printed(const std::string& text) {
  for (auto& line : amt::lines_containing(text, "PTR=")) {
    auto v = amt::hex_numbers(line.substr(line.find("PTR=")));
    if (!v.empty()) return v[0];
  }
  return 0;
}

// A death-test matcher over the child's stderr.
class BadFreeReport : public ::testing::MatcherInterface<const std::string&> {
 public:
  bool MatchAndExplain(const std::string& err,
                       ::testing::MatchResultListener* listener) const override {
    std::uintptr_t ptr = ptr_printed(err);
    if (!ptr) {
      *listener << "the test did not print PTR=";
      return false;
    }
    std::string why = check_report(err, ptr);
    if (!why.empty()) {
      *listener << why;
      return false;
    }
    return true;
  }
  void DescribeTo(std::ostream* os) const override {
    *os << "one stderr line with \"amalloc\", \"free\" and the pointer in hex";
  }
};

::testing::Matcher<const std::string&> bad_free_report() {
  return ::testing::MakeMatcher(new BadFreeReport);
}

// The pointer goes to stderr first so the matcher knows which to look for.
void announce(const void* p) {
  std::fprintf(stderr, "PTR=%p\n", p);
  std::fflush(stderr);
}

#define EXPECT_BAD_FREE_ABORTS(statement) \
  EXPECT_EXIT(statement, ::testing::KilledBySignal(SIGABRT), bad_free_report())

void free_stack_pointer() {
  char buf[128];
  std::memset(buf, 1, sizeof buf);
  void* volatile bad = buf + 32;
  announce(bad);
  am_free(bad);
}

void free_global_pointer() {
  void* volatile bad = g_global_buffer + 16;
  announce(bad);
  am_free(bad);
}

void free_interior_pointer(std::size_t size, std::size_t offset) {
  char* p = static_cast<char*>(am_malloc(size));
  void* volatile bad = p + offset;
  announce(bad);
  am_free(bad);
}

void free_system_malloc_pointer(std::size_t size) {
  void* g = std::malloc(size);
  void* volatile bad = g;
  announce(bad);
  am_free(bad);
}

void double_free(std::size_t size) {
  void* p = am_malloc(size);
  std::memset(p, 7, size);
  announce(p);
  am_free(p);
  am_free(p);
}

void free_after_realloc_to_zero() {
  void* p = am_malloc(64);
  announce(p);
  void* q = am_realloc(p, 0);
  (void)q;
  am_free(p);
}

void free_sized_stack_pointer() {
  char buf[64];
  void* volatile bad = buf + 16;
  announce(bad);
  am_free_sized(bad, 16);
}

// ---- default policy: abort ----------------------------------------------------

TEST(BadFreeDeathTest, StackPointerAborts) { EXPECT_BAD_FREE_ABORTS(free_stack_pointer()); }
TEST(BadFreeDeathTest, GlobalPointerAborts) { EXPECT_BAD_FREE_ABORTS(free_global_pointer()); }
TEST(BadFreeDeathTest, InteriorPointerPlus8Aborts) {
  EXPECT_BAD_FREE_ABORTS(free_interior_pointer(64, 8));
}
TEST(BadFreeDeathTest, InteriorPointerPlus16Aborts) {
  EXPECT_BAD_FREE_ABORTS(free_interior_pointer(256, 16));
}
TEST(BadFreeDeathTest, InteriorPointerOfMediumBlockAborts) {
  EXPECT_BAD_FREE_ABORTS(free_interior_pointer(20000, 8));
}
TEST(BadFreeDeathTest, InteriorPointerOfLargeBlockAborts) {
  EXPECT_BAD_FREE_ABORTS(free_interior_pointer(300000, 8));
}
TEST(BadFreeDeathTest, PageInteriorPointerOfLargeBlockAborts) {
  EXPECT_BAD_FREE_ABORTS(free_interior_pointer(300000, 8192));
}
TEST(BadFreeDeathTest, SystemMallocPointerAborts) {
  EXPECT_BAD_FREE_ABORTS(free_system_malloc_pointer(64));
}
TEST(BadFreeDeathTest, LargeSystemMallocPointerAborts) {
  EXPECT_BAD_FREE_ABORTS(free_system_malloc_pointer(1 << 20));
}
TEST(BadFreeDeathTest, DoubleFreeSmallAborts) { EXPECT_BAD_FREE_ABORTS(double_free(64)); }
TEST(BadFreeDeathTest, DoubleFreeTinyAborts) { EXPECT_BAD_FREE_ABORTS(double_free(16)); }
TEST(BadFreeDeathTest, DoubleFreeMediumAborts) { EXPECT_BAD_FREE_ABORTS(double_free(20000)); }
TEST(BadFreeDeathTest, DoubleFreeLargeAborts) { EXPECT_BAD_FREE_ABORTS(double_free(300000)); }
TEST(BadFreeDeathTest, DoubleFreeHugeAborts) { EXPECT_BAD_FREE_ABORTS(double_free(8u << 20)); }
TEST(BadFreeDeathTest, FreeAfterReallocToZeroAborts) {
  EXPECT_BAD_FREE_ABORTS(free_after_realloc_to_zero());
}
TEST(BadFreeDeathTest, FreeSizedStackPointerAborts) {
  EXPECT_BAD_FREE_ABORTS(free_sized_stack_pointer());
}

TEST(BadFree, ValidFreesPrintNothing) {
  std::string err = amt::capture_stderr([] {
    am_free(nullptr);
    for (std::size_t n : {0ul, 16ul, 100ul, 5000ul, 70000ul, 300000ul, 8ul << 20}) {
      void* p = am_malloc(n);
      am_free(p);
      p = am_malloc(n);
      am_free_sized(p, n);
    }
  });
  EXPECT_EQ(err, "");
}

// ---- AMALLOC_BAD_FREE=report: reported, ignored, the program goes on --------

// Common part of the report-mode scenarios: prints PTR= on stdout, does the
// bad free, prints how many bad frees the stats counted.
void report_bad_free(void* bad, void (*do_free)(void*)) {
  std::printf("PTR=%p\n", bad);
  std::fflush(stdout);
  std::uint64_t before = amt::stats().bad_frees;
  do_free(bad);
  std::uint64_t after = amt::stats().bad_frees;
  std::printf("BAD_FREES=%" PRIu64 "\n", after - before);
}

// Allocates `count` blocks of `size`, all distinct, writes and checks them:
// the free lists are consistent after an ignored bad free.
bool heap_still_consistent(std::size_t size, int count) {
  std::vector<void*> v;
  std::set<void*> seen;
  for (int i = 0; i < count; ++i) {
    void* p = am_malloc(size);
    if (!p || !seen.insert(p).second) {
      std::printf("block %d of size %zu: %p %s\n", i, size, p, p ? "handed out twice" : "NULL");
      return false;
    }
    amt::fill_pattern(p, size, static_cast<std::uint64_t>(i));
    v.push_back(p);
  }
  for (int i = 0; i < count; ++i) {
    if (amt::check_pattern(v[static_cast<std::size_t>(i)], size, static_cast<std::uint64_t>(i)) !=
        SIZE_MAX) {
      std::printf("block %d of size %zu overlaps another\n", i, size);
      return false;
    }
  }
  for (void* p : v) am_free(p);
  return true;
}

void plain_free(void* p) { am_free(p); }

AMT_SCENARIO(report_stack) {
  char buf[128];
  report_bad_free(buf + 32, plain_free);
  std::puts(heap_still_consistent(64, 100) ? "DONE" : "BROKEN");
  return 0;
}

AMT_SCENARIO(report_global) {
  report_bad_free(g_global_buffer + 16, plain_free);
  std::puts(heap_still_consistent(64, 100) ? "DONE" : "BROKEN");
  return 0;
}

int report_interior(std::size_t size, std::size_t offset) {
  char* p = static_cast<char*>(am_malloc(size));
  amt::fill_pattern(p, size, 5);
  report_bad_free(p + offset, plain_free);
  // The block is untouched and still live.
  bool ok = amt::check_pattern(p, size, 5) == SIZE_MAX && heap_still_consistent(size, 50);
  am_free(p);
  std::puts(ok ? "DONE" : "BROKEN");
  return 0;
}
AMT_SCENARIO(report_interior_small) { return report_interior(64, 8); }
AMT_SCENARIO(report_interior_large) { return report_interior(300000, 8); }

AMT_SCENARIO(report_system_malloc) {
  void* g = std::malloc(64);
  std::memset(g, 3, 64);
  report_bad_free(g, plain_free);
  bool ok = amt::check_bytes(g, 64, 3) == SIZE_MAX;
  std::free(g);  // still the system's block
  std::puts(ok && heap_still_consistent(64, 100) ? "DONE" : "BROKEN");
  return 0;
}

int report_double(std::size_t size) {
  void* p = am_malloc(size);
  std::memset(p, 7, size);
  am_free(p);
  report_bad_free(p, plain_free);
  // p was freed once: it may be handed out again, but only once.
  std::puts(heap_still_consistent(size, size > 100000 ? 8 : 200) ? "DONE" : "BROKEN");
  return 0;
}
AMT_SCENARIO(report_double_small) { return report_double(64); }
AMT_SCENARIO(report_double_medium) { return report_double(20000); }
AMT_SCENARIO(report_double_large) { return report_double(300000); }
AMT_SCENARIO(report_double_huge) { return report_double(8u << 20); }

AMT_SCENARIO(abort_explicit_double) {
  void* p = am_malloc(64);
  am_free(p);
  std::printf("PTR=%p\n", p);
  std::fflush(stdout);
  am_free(p);
  std::puts("SURVIVED");
  return 0;
}

// A double free aborts with no allocator lock held: a SIGABRT handler that
// allocates (a crash reporter) must not hang. A block of a page that was
// full at its first free, and a medium block past its page's first slot
// (always off the fast path: it once reported under the heap lock).
void abort_handler_allocates(int) {
  void* p = am_malloc(200000);  // large_alloc: a slow path of this heap
  am_free(am_malloc(100));
  am_free(p);
  _exit(42);
}
int double_free_then_handler(bool full_page) {
  signal(SIGABRT, abort_handler_allocates);
  void* blocks[64];
  void* victim;
  if (full_page) {  // a page of 1 KiB blocks filled, then one freed twice
    for (auto& b : blocks) b = am_malloc(1024);
    blocks[0] = am_malloc(1024);  // the next page: the first one goes to the full list
    victim = blocks[5];
  } else {
    for (int i = 0; i < 16; i++) blocks[i] = am_malloc(16 * 1024);
    victim = blocks[10];  // past the first 64 KiB slot of its page
  }
  am_free(victim);
  am_free(victim);
  return 3;  // not reached
}
AMT_SCENARIO(abort_handler_allocates_full) { return double_free_then_handler(true); }
AMT_SCENARIO(abort_handler_allocates_medium) { return double_free_then_handler(false); }

void expect_reported_and_ignored(const char* scenario) {
  auto r = amt::run_scenario(scenario, {{"AMALLOC_BAD_FREE", "report"}});
  ASSERT_TRUE(r.exited_ok()) << scenario << ": " << r.describe();
  EXPECT_NE(r.out.find("DONE"), std::string::npos) << scenario << ": " << r.describe();
  EXPECT_NE(r.out.find("BAD_FREES=1\n"), std::string::npos)
      << scenario << ": am_stats_t.bad_frees did not count the bad free once\n"
      << r.describe();
  std::uintptr_t ptr = ptr_printed(r.out);
  ASSERT_NE(ptr, 0u) << r.describe();
  std::string why = check_report(r.err, ptr);
  EXPECT_TRUE(why.empty()) << scenario << ": " << why << "\n" << r.describe();
}

TEST(BadFreeReport, StackPointer) { expect_reported_and_ignored("report_stack"); }
TEST(BadFreeReport, GlobalPointer) { expect_reported_and_ignored("report_global"); }
TEST(BadFreeReport, InteriorPointerSmall) { expect_reported_and_ignored("report_interior_small"); }
TEST(BadFreeReport, InteriorPointerLarge) { expect_reported_and_ignored("report_interior_large"); }
TEST(BadFreeReport, SystemMallocPointer) { expect_reported_and_ignored("report_system_malloc"); }
TEST(BadFreeReport, DoubleFreeSmall) { expect_reported_and_ignored("report_double_small"); }
TEST(BadFreeReport, DoubleFreeMedium) { expect_reported_and_ignored("report_double_medium"); }
TEST(BadFreeReport, DoubleFreeLarge) { expect_reported_and_ignored("report_double_large"); }
TEST(BadFreeReport, DoubleFreeHuge) { expect_reported_and_ignored("report_double_huge"); }

TEST(BadFreeReport, ExplicitAbortPolicyAborts) {
  auto r = amt::run_scenario("abort_explicit_double", {{"AMALLOC_BAD_FREE", "abort"}});
  EXPECT_TRUE(WIFSIGNALED(r.wait_status) && WTERMSIG(r.wait_status) == SIGABRT) << r.describe();
  EXPECT_EQ(r.out.find("SURVIVED"), std::string::npos) << r.describe();
  std::uintptr_t ptr = ptr_printed(r.out);
  ASSERT_NE(ptr, 0u) << r.describe();
  std::string why = check_report(r.err, ptr);
  EXPECT_TRUE(why.empty()) << why << "\n" << r.describe();
}

}  // namespace

TEST(BadFreeDeathTest, AbortHandlerThatAllocatesRuns) {
  for (const char* scenario : {"abort_handler_allocates_full", "abort_handler_allocates_medium"}) {
    auto r = amt::run_scenario(scenario, {{"AMALLOC_BAD_FREE", "abort"}}, 20);
    EXPECT_TRUE(WIFEXITED(r.wait_status) && WEXITSTATUS(r.wait_status) == 42)
        << scenario << ": the SIGABRT handler did not finish (a lock held across abort?)\n"
        << r.describe();
  }
}
