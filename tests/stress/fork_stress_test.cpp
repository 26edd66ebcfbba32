// fork() while other threads allocate and free: every child must find a
// consistent allocator, read and free blocks allocated by the parent's
// threads (which do not exist in the child), allocate on its own, start a
// thread, and exit cleanly.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"
#include "stress_common.h"

namespace {

using namespace stress;

constexpr int kPublished = 64;

// Blocks that the parent's worker threads keep replacing; the main thread
// holds the mutex across fork(), so a child sees them consistent.
struct Published {
  std::mutex m;
  Rec slots[kPublished];
  int filled = 0;
};

void parent_worker(unsigned id, Published& pub, std::atomic<bool>& stop,
                   std::atomic<std::uint64_t>& ops) {
  amt::Rng rng(77 + id);
  std::vector<Rec> live;
  std::uint64_t counter = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    live.push_back(allocate(rng, (std::uint64_t{id} << 40) | counter++));
    if (live.size() > 200 || rng.chance(40)) {
      std::size_t k = rng.below(live.size());
      release(live[k], rng);
      live[k] = live.back();
      live.pop_back();
    }
    if (rng.chance(2)) {
      std::lock_guard<std::mutex> g(pub.m);
      Rec& slot = pub.slots[rng.below(kPublished)];
      if (slot.p)
        release(slot, rng);
      else
        ++pub.filled;
      slot = allocate(rng, (std::uint64_t{id + 100} << 40) | counter++);
    }
    // Leave CPU time to the forked children (2-core machines).
    if (ops.fetch_add(1, std::memory_order_relaxed) % 64 == 63)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (const Rec& r : live) release(r, rng);
}

// In the child: only async-signal-safe reporting and _exit.
[[noreturn]] void child_fail(int code, const char* what) {
  std::fprintf(stderr, "fork child %d: %s\n", static_cast<int>(getpid()), what);
  std::fflush(stderr);
  _exit(code);
}

void child_allocations(amt::Rng& rng, std::uint64_t tag) {
  std::vector<Rec> mine;
  for (int i = 0; i < 300; ++i) mine.push_back(allocate(rng, tag + static_cast<std::uint64_t>(i)));
  // A huge block and a calloc of recycled memory.
  void* h = am_malloc(5u << 20);
  if (!h) child_fail(2, "huge am_malloc failed");
  std::memset(h, 0x5A, 5u << 20);
  for (std::size_t n : {64ul, 4000ul, 100000ul}) {
    void* c = am_calloc(1, n);
    if (!c || amt::check_bytes(c, n, 0) != SIZE_MAX) child_fail(3, "calloc not zero in child");
    am_free(c);
  }
  for (Rec& r : mine)
    if (rng.chance(30)) reallocate(r, rng, r.seed + 1000000);
  for (const Rec& r : mine) release(r, rng);
  am_free(h);
}

int child_main(int index, Published& pub) {
  amt::Rng rng(5000 + static_cast<std::uint64_t>(index));
  // 1. The parent's blocks are intact; free or realloc them here.
  for (int k = 0; k < kPublished; ++k) {
    Rec& r = pub.slots[k];
    if (!r.p) continue;
    verify(r, "published block corrupted in the fork child");
    if ((k + index) % 3 == 0) {
      release(r, rng);
      r.p = nullptr;
    } else if ((k + index) % 3 == 1) {
      reallocate(r, rng, 0xC0DE0000u + static_cast<std::uint64_t>(k));
    }
  }
  // 2. Allocate and free on our own.
  child_allocations(rng, std::uint64_t{0xC1} << 40);
  // 3. Now and then start a thread (the allocator restarts what it needs).
#if !AMT_TSAN  // TSan does not support new threads after a multi-threaded fork
  if (index % 10 == 0) {
    std::thread t([&] {
      amt::Rng trng(9000 + static_cast<std::uint64_t>(index));
      child_allocations(trng, std::uint64_t{0xC2} << 40);
      for (int k = 0; k < kPublished; k += 2) {
        Rec& r = pub.slots[k];
        if (!r.p) continue;
        release(r, trng);  // a block of the parent, freed by the child's thread
        r.p = nullptr;
      }
    });
    t.join();
  }
#endif
  // 4. Now and then fork again from the child.
  if (index % 50 == 25) {
    pid_t g = fork();
    if (g < 0) child_fail(5, "fork in child failed");
    if (g == 0) {
      amt::Rng grng(12345);
      child_allocations(grng, std::uint64_t{0xC3} << 40);
      _exit(0);
    }
    int st = 0;
    if (waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
      child_fail(6, "grandchild failed");
  }
  for (int k = 0; k < kPublished; ++k) {
    Rec& r = pub.slots[k];
    if (r.p) release(r, rng);
  }
  return 0;
}

// Waits for `pid` up to `seconds`; kills it after that.
int wait_with_timeout(pid_t pid, int seconds, bool* timed_out) {
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  *timed_out = false;
  for (;;) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) return status;
    if (w < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > deadline) {
      // Where it hangs, for the report: every thread's stack when gdb is
      // there, else what each thread waits in.
      std::string cmd =
          access("/usr/bin/gdb", X_OK) == 0
              ? "/usr/bin/gdb -p " + std::to_string(pid) +
                    " -batch -ex 'thread apply all bt' 1>&2 2>/dev/null"
              : "for t in /proc/" + std::to_string(pid) +
                    "/task/*; do echo \"$t $(cat $t/wchan) $(cat $t/syscall)\"; done 1>&2";
      std::fprintf(stderr, "fork child %d hangs; its threads:\n", static_cast<int>(pid));
      if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "(could not inspect it)\n");
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      *timed_out = true;
      return status;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
}

TEST(ForkStress, ForkWhileThreadsAllocate) {
  const int forks = static_cast<int>(amt::scaled(200, 20));
  Published pub;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> ops{0};
  std::vector<std::thread> workers;
  for (unsigned i = 0; i < 4; ++i)
    workers.emplace_back(parent_worker, i, std::ref(pub), std::ref(stop), std::ref(ops));
  // Let the workers fill the published slots.
  for (int spins = 0; spins < 20000; ++spins) {
    {
      std::lock_guard<std::mutex> g(pub.m);
      if (pub.filled >= kPublished / 2) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  int failures = 0, hangs = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < forks && failures < 5; ++i) {
    pub.m.lock();
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) _exit(child_main(i, pub));
    pub.m.unlock();
    ASSERT_GT(pid, 0) << "fork failed: " << std::strerror(errno);
    bool timed_out = false;
    int status = wait_with_timeout(pid, 60, &timed_out);
    if (timed_out) {
      ++hangs;
      ++failures;
      ADD_FAILURE() << "fork child " << i << " hung (deadlock after fork?) and was killed";
    } else if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      ++failures;
      if (WIFSIGNALED(status))
        ADD_FAILURE() << "fork child " << i << " killed by signal " << WTERMSIG(status);
      else
        ADD_FAILURE() << "fork child " << i << " exited with code " << WEXITSTATUS(status);
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stop.store(true);
  for (auto& t : workers) t.join();
  amt::Rng rng(3);
  for (Rec& r : pub.slots)
    if (r.p) release(r, rng);
  std::printf("%d forks in %.2f s while 4 threads did %llu operations\n", forks, secs,
              static_cast<unsigned long long>(ops.load()));
}

TEST(ForkStress, ChildOfSingleThreadedParentCanAllocate) {
  // The simple case, and the parent is fine afterwards.
  std::vector<void*> v;
  for (int i = 0; i < 1000; ++i) v.push_back(am_malloc(static_cast<std::size_t>(i) * 7));
  for (int round = 0; round < 20; ++round) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      for (void* p : v) am_free(p);
      amt::Rng rng(1);
      child_allocations(rng, 1);
      _exit(0);
    }
    bool timed_out = false;
    int status = wait_with_timeout(pid, 60, &timed_out);
    ASSERT_FALSE(timed_out);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
  for (void* p : v) am_free(p);
}

}  // namespace
