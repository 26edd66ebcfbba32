// Meshing and fork(): the child gets its own copy of meshed pages and
// writes never cross between parent and child; fork while another thread
// uses stdio; fork at the descriptor limit; and a raised SIGSEGV keeps its
// default or ignored action with
// amalloc's fault handler installed. Each case runs as a scenario in a
// fresh process with AMALLOC_MESH=1 (see mesh_test.cpp).
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
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

// A process at its descriptor limit can still fork: the child's copy of the
// heap goes into a memory file made ahead of the fork (it used to abort).
AMT_SCENARIO(mesh_fork_at_descriptor_limit) {
  std::vector<Block> kept = make_sparse(false);
  mesh();
  print_mesh_stats();
  int top = 0;
  for (int fd = 0; fd < 4096; fd++)
    if (fcntl(fd, F_GETFD) != -1) top = fd;
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  const rlim_t soft = lim.rlim_cur;
  lim.rlim_cur = static_cast<rlim_t>(top + 1);
  if (setrlimit(RLIMIT_NOFILE, &lim) != 0) return 3;
  std::vector<int> filler;  // descriptors below the top that were free
  int fd;
  while ((fd = open("/dev/null", O_RDONLY)) >= 0) filler.push_back(fd);
  std::printf("EMFILE %d\n", errno == EMFILE ? 1 : 0);
  int ok = 0;
  for (int i = 0; i < 3; i++) {
    std::fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 4;
    if (pid == 0)
      _exit(bad_blocks(kept, 0, "child") == 0 && fresh_allocations(1u << 20) == 0 ? 0 : 1);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) ok++;
  }
  for (int f : filler) close(f);
  lim.rlim_cur = soft;  // the exit (and LeakSanitizer's) may need descriptors
  setrlimit(RLIMIT_NOFILE, &lim);
  std::printf("FORKS_OK %d\nPARENT_BAD %zu\n", ok, bad_blocks(kept, 0, "parent"));
  free_all(kept);
  return 0;
}

TEST(Mesh, ForkAtTheDescriptorLimit) {
  auto c = amt::run_scenario("mesh_fork_at_descriptor_limit", kEnv);
  ASSERT_TRUE(c.exited_ok()) << "amalloc aborted the fork?\n" << c.describe();
  if (unmeshed_under_sanitizer(c)) GTEST_SKIP() << kNoMeshUnderSanitizer;
  ASSERT_EQ(value_of(c.out, "EMFILE"), 1) << "the set-up did not reach the limit\n" << c.describe();
  EXPECT_EQ(value_of(c.out, "FORKS_OK"), 3) << c.describe();
  EXPECT_EQ(value_of(c.out, "PARENT_BAD"), 0) << c.describe();
}

// The spare memory file is made ahead of the fork; an application that
// closes its descriptor and opens a file on the same number keeps its file
// (the fork makes another memory file).
AMT_SCENARIO(mesh_fork_after_the_spare_was_closed) {
  std::vector<Block> kept = make_sparse(false);
  mesh();
  int spare = -1;
  for (int fd = 3; fd < 4096; fd++) {  // the spare is made after the heap's file
    char path[64], link[256];
    std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0) continue;
    link[n] = 0;
    if (std::strstr(link, "memfd:amalloc")) spare = fd;
  }
  if (spare < 0) return 3;
  close(spare);
  char name[] = "/tmp/amalloc-spare-XXXXXX";
  int mine = mkstemp(name);
  unlink(name);
  std::printf("SAME_NUMBER %d\n", mine == spare ? 1 : 0);
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) return 4;
  if (pid == 0) _exit(bad_blocks(kept, 0, "child") == 0 ? 0 : 1);
  int status = 0;
  waitpid(pid, &status, 0);
  struct stat st {};
  bool still_mine = fstat(mine, &st) == 0 && st.st_size == 0 && write(mine, "x", 1) == 1;
  std::printf("CHILD %d\nSTILL_MINE %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 100,
              still_mine ? 1 : 0);
  close(mine);
  free_all(kept);
  return 0;
}

TEST(Mesh, ForkAfterTheApplicationReusedTheSpareDescriptor) {
  auto c = amt::run_scenario("mesh_fork_after_the_spare_was_closed", kEnv);
  ASSERT_TRUE(c.exited_ok()) << "amalloc aborted the fork?\n" << c.describe();
  if (unmeshed_under_sanitizer(c)) GTEST_SKIP() << kNoMeshUnderSanitizer;
  ASSERT_EQ(value_of(c.out, "SAME_NUMBER"), 1) << c.describe();
  EXPECT_EQ(value_of(c.out, "CHILD"), 0) << c.describe();
  EXPECT_EQ(value_of(c.out, "STILL_MINE"), 1) << "the heap was copied into the file\n"
                                              << c.describe();
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
  if (AMT_SANITIZED)
    GTEST_SKIP() << "the sanitizer's own SIGSEGV handler is the disposition amalloc chains to";
  auto c = amt::run_scenario("mesh_raised_sigsegv", kEnv);
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_EQ(value_of(c.out, "DEFAULT_SIGNAL"), SIGSEGV) << c.describe();
  EXPECT_EQ(value_of(c.out, "IGNORED_SURVIVED"), 1) << c.describe();
}
