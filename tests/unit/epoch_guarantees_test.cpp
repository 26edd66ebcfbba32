// The epoch collector's documented guarantees that the structure tests do
// not reach: a deleter that pins inside an executor's idle point, the order
// of one thread's deleters, am_retire_fn's function before the free, the
// pending bytes of amalloc::retire, the long-pin warning, and the pattern
// that test builds write into reclaimed blocks.
#include <amalloc/amalloc.h>
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <amalloc/amalloc.hpp>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "amalloc_test_support.h"

namespace {

using namespace std::chrono_literals;

// ---- a deleter that pins, run at an executor's idle point ---------------------

struct Cell {
  std::atomic<uint64_t> alive;
};
constexpr uint64_t kAlive = 0xA11CE;

std::atomic<Cell*> g_shared;
std::atomic<bool> g_deleter_done;
std::atomic<uint64_t> g_bad_reads;
thread_local bool t_on_executor = false;

// Reads the shared cell under a guard for 100 ms, while a writer replaces
// it, waits for a grace period and frees it: the guard must hold the
// writer's grace period up. (Deferred again until it runs on the executor.)
void pinning_deleter(void*, void*) {
  if (!t_on_executor) {
    am_epoch_defer(reinterpret_cast<void*>(1), pinning_deleter, nullptr);
    return;
  }
  {
    amalloc::epoch::guard g;
    Cell* c = g_shared.load(std::memory_order_acquire);
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < 100ms)
      if (c->alive.load(std::memory_order_relaxed) != kAlive) {
        g_bad_reads++;
        break;
      }
  }
  g_deleter_done = true;
}

TEST(EpochGuarantees, ADeleterOnAnExecutorsIdlePointPinsWithAGuard) {
  auto* first = static_cast<Cell*>(am_malloc(sizeof(Cell)));
  first->alive = kAlive;
  g_shared = first;
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    while (!stop) {
      auto* c = static_cast<Cell*>(am_malloc(sizeof(Cell)));
      c->alive = kAlive;
      Cell* old = g_shared.exchange(c);
      am_epoch_synchronize();
      old->alive = 0xDEAD;  // as good as freed: a reader still on it sees it
      am_free(old);
      std::this_thread::sleep_for(100us);
    }
  });
  std::thread executor([] {
    t_on_executor = true;
    amalloc::epoch::executor reg;
    am_epoch_defer(reinterpret_cast<void*>(1), pinning_deleter, nullptr);
    while (!g_deleter_done) {
      am_executor_idle();
      std::this_thread::sleep_for(100us);
    }
  });
  executor.join();
  stop = true;
  writer.join();
  am_free(g_shared.exchange(nullptr));
  EXPECT_EQ(g_bad_reads.load(), 0u) << "a deleter's guard did not hold a grace period up";
}

// A deleter run at an executor's idle point may unregister the executor:
// the thread must then be unpinned, or every grace period waits for it.
TEST(EpochGuarantees, ADeleterThatUnregistersItsExecutorLeavesItUnpinned) {
  std::atomic<bool> ran{false}, stop{false};
  // Deferred again until it runs on the executor (the worker may run it).
  static void (*unregister)(void*, void*) = [](void* flag, void*) {
    if (!t_on_executor) return am_epoch_defer(flag, unregister, nullptr);
    am_epoch_executor_unregister();
    static_cast<std::atomic<bool>*>(flag)->store(true);
  };
  std::thread executor([&] {
    t_on_executor = true;
    am_epoch_executor_register();
    am_epoch_defer(&ran, unregister, nullptr);
    while (!ran) {
      am_executor_idle();
      std::this_thread::sleep_for(100us);
    }
    while (!stop) std::this_thread::sleep_for(1ms);  // alive, no longer an executor
  });
  while (!ran) std::this_thread::sleep_for(1ms);
  std::atomic<bool> synced{false};
  std::thread waiter([&] {
    am_epoch_synchronize();
    synced = true;
  });
  const auto t0 = std::chrono::steady_clock::now();
  while (!synced && std::chrono::steady_clock::now() - t0 < 5s) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(synced.load()) << "a grace period waits for a thread that is no executor any more";
  stop = true;
  executor.join();
  waiter.join();
}

// A deleter run at an executor's idle point must not hold grace periods
// up: here it waits for the lock of a writer that waits for one.
TEST(EpochGuarantees, ADeleterAtAnIdlePointDoesNotHoldGracePeriodsUp) {
  static std::mutex writer_lock;
  static std::atomic<bool> entered;
  entered = false;
  std::unique_lock<std::mutex> w(writer_lock);  // lock; unlink; synchronize; free; unlock
  // Deferred again until it runs on the executor (the worker may run it).
  static void (*wait_for_writer)(void*, void*) = [](void*, void*) {
    if (!t_on_executor) return am_epoch_defer(nullptr, wait_for_writer, nullptr);
    entered = true;
    std::lock_guard<std::mutex> g(writer_lock);
  };
  std::thread executor([] {
    t_on_executor = true;
    am_epoch_executor_register();
    am_epoch_defer(nullptr, wait_for_writer, nullptr);
    while (!entered) {
      am_executor_idle();
      std::this_thread::sleep_for(100us);
    }
    am_epoch_executor_unregister();
  });
  while (!entered) std::this_thread::sleep_for(100us);
  std::atomic<bool> synced{false};
  std::thread writer([&] {
    am_epoch_synchronize();
    synced = true;
  });
  const auto t0 = std::chrono::steady_clock::now();
  while (!synced && std::chrono::steady_clock::now() - t0 < 5s) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(synced.load()) << "the deleter's pin held the writer's grace period up";
  w.unlock();  // (lets the deleter and, if it hung, synchronize finish)
  writer.join();
  executor.join();
}

// ---- order, and am_retire_fn's function before the free -----------------------

std::vector<int> g_order;  // deleters of one thread run one at a time, in order

TEST(EpochGuarantees, OneThreadsDeletersRunInTheOrderOfItsRetirements) {
  std::thread([] {
    g_order.clear();
    static int ids[1000];
    for (int i = 0; i < 1000; i++) {  // over several batches
      ids[i] = i;
      am_epoch_defer(
          &ids[i], [](void* p, void*) { g_order.push_back(*static_cast<int*>(p)); }, nullptr);
    }
    am_epoch_barrier();
  }).join();
  ASSERT_EQ(g_order.size(), 1000u);
  for (int i = 0; i < 1000; i++) ASSERT_EQ(g_order[i], i);
}

TEST(EpochGuarantees, RetireFnRunsItsFunctionWhileTheBlockIsStillValid) {
  struct Ctx {
    int runs = 0;
    bool intact = true;
  } ctx;
  auto* p = static_cast<unsigned char*>(am_malloc(256));
  memset(p, 0x5A, 256);
  am_retire_fn(
      p,
      [](void* q, void* c) {
        auto* x = static_cast<Ctx*>(c);
        x->runs++;
        // Still the caller's block: owned, and its contents untouched.
        x->intact = am_owns(q) && amt::check_bytes(q, 256, 0x5A) == SIZE_MAX;
      },
      &ctx);
  am_epoch_barrier();
  EXPECT_EQ(ctx.runs, 1);
  EXPECT_TRUE(ctx.intact);
}

// ---- pending bytes --------------------------------------------------------------

// Made by amalloc also in this test program, which does not replace the
// global operator new.
struct Payload {
  char bytes[1000];
  static void* operator new(size_t n) { return am_malloc(n); }
  static void operator delete(void* p) { am_free(p); }
};

TEST(EpochGuarantees, PendingBytesCountTheBlocksOfCppRetire) {
  std::thread([] {
    am_epoch_barrier();
    am_epoch_stats_t before, after;
    am_epoch_stats(&before);
    amalloc::epoch::guard g;  // nothing is reclaimed while this thread is pinned
    for (int i = 0; i < 50; i++) amalloc::retire(new Payload);
    am_epoch_stats(&after);
    EXPECT_GE(after.pending_bytes - before.pending_bytes, 50u * sizeof(Payload));
    // A deferred function on something that is not a block of ours counts 0.
    static int not_a_block;
    am_epoch_stats(&before);
    am_epoch_defer(
        &not_a_block, [](void*, void*) {}, nullptr);
    am_epoch_stats(&after);
    EXPECT_EQ(after.pending_bytes, before.pending_bytes);
  }).join();
  am_epoch_barrier();
}

TEST(EpochGuarantees, TheStatsReportHasTheCollectorsLine) {
  std::thread([] {
    amalloc::epoch::guard g;  // keeps the three pending
    for (int i = 0; i < 3; i++) am_retire(am_malloc(100));
    std::string text = amt::capture_stderr([] { am_stats_print(); });
    std::string json = amt::capture_stderr([] { am_stats_print_json(); });
    EXPECT_NE(text.find("  epochs:     epoch "), std::string::npos) << text;
    EXPECT_NE(text.find(" pending ("), std::string::npos) << text;
    EXPECT_NE(json.find(",\"epoch\":{\"epoch\":"), std::string::npos) << json;
    EXPECT_NE(json.find("\"pending_bytes\":"), std::string::npos) << json;
  }).join();
  am_epoch_barrier();
}

// A guard held at the idle point (across a co_await, most likely) is
// reported, once a second at most, however often the loop comes by.
TEST(EpochGuarantees, TheIdlePointReportsAGuardHeldAcrossIt) {
  std::string err = amt::capture_stderr([] {
    std::thread([] {
      amalloc::epoch::guard g;
      for (int i = 0; i < 100; i++) am_executor_idle();
    }).join();
  });
  EXPECT_EQ(amt::lines_containing(err, "am_executor_idle(): called while pinned").size(), 1u)
      << err;
}

// Deleters of any alignment, and const objects of polymorphic types.
struct alignas(64) WideDeleter {
  int runs = 0;
  static inline std::atomic<int> misaligned{0}, called{0};
  void operator()(Payload* p) {
    if (reinterpret_cast<uintptr_t>(this) % 64 != 0) misaligned++;
    called++;
    delete p;
  }
};
struct Base {
  virtual ~Base() = default;
  static void* operator new(size_t n) { return am_malloc(n); }
  static void operator delete(void* p) { am_free(p); }
};
struct Other {
  virtual ~Other() = default;
  uint64_t x = 7;
};
struct Derived : Other, Base {
  static inline std::atomic<int> destroyed{0};
  ~Derived() override { destroyed++; }
};

TEST(EpochGuarantees, CppRetireWithAWideDeleterAndAConstPolymorphicObject) {
  amalloc::retire(new Payload, WideDeleter{});
  const Base* b = new Derived;  // Base is not at the start of the block
  amalloc::retire(b);
  am_epoch_barrier();
  EXPECT_EQ(WideDeleter::called.load(), 1);
  EXPECT_EQ(WideDeleter::misaligned.load(), 0);
  EXPECT_EQ(Derived::destroyed.load(), 1);
  EXPECT_EQ(amt::bad_frees_since_mark(), 0u);
}

// Pointers to const with an empty deleter (passed to the collector as is)
// and with a stateful one (kept in a holder).
struct ConstDeleter {
  static inline std::atomic<int> called{0};
  void operator()(const Payload* p) const {
    called++;
    delete p;
  }
};

TEST(EpochGuarantees, CppRetireOfAConstPointerWithEmptyAndStatefulDeleters) {
  static_assert(std::is_empty_v<ConstDeleter>);
  const Payload* a = new Payload;
  amalloc::retire(a, ConstDeleter{});
  std::atomic<int> stateful{0};
  const Payload* b = new Payload;
  amalloc::retire(b, [&stateful](const Payload* p) {
    stateful++;
    delete p;
  });
  am_epoch_barrier();
  EXPECT_EQ(ConstDeleter::called.load(), 1);
  EXPECT_EQ(stateful.load(), 1);
  EXPECT_EQ(amt::bad_frees_since_mark(), 0u);
}

// A pointer that is not a block of ours is reported, naming am_retire and
// the pointer, and ignored: nothing is freed when the batch runs.
TEST(EpochGuarantees, RetiringWhatIsNotABlockIsReportedAndIgnored) {
  int on_stack = 0;
  auto* block = static_cast<char*>(am_malloc(256));
  memset(block, 'K', 256);
  std::string err = amt::capture_stderr([&] {
    am_retire(&on_stack);
    am_retire(block + 16);
    am_epoch_barrier();
  });
  EXPECT_EQ(amt::lines_containing(err,
                                  "am_retire(): invalid pointer (not allocated by amalloc), "
                                  "ignored:")
                .size(),
            1u)
      << err;
  EXPECT_EQ(amt::lines_containing(err,
                                  "am_retire(): invalid pointer (not the start of a live "
                                  "block), ignored:")
                .size(),
            1u)
      << err;
  EXPECT_EQ(amt::lines_containing(err, "amalloc:").size(), 2u) << err;  // nothing at reclaim
  EXPECT_EQ(amt::check_bytes(block, 256, 'K'), SIZE_MAX);
  am_free(block);
}

// ---- the long-pin warning ---------------------------------------------------------

AMT_SCENARIO(epoch_long_pin) {
  std::atomic<int> step{0};
  std::thread pinned([&] {
    pthread_setname_np(pthread_self(), "am-pinner");
    am_epoch_enter();
    step = 1;
    std::this_thread::sleep_for(400ms);
    am_epoch_exit();
  });
  while (step.load() == 0) std::this_thread::yield();
  am_epoch_synchronize();  // tries to advance until the pin ends
  pinned.join();
  return 0;
}

TEST(EpochGuarantees, AThreadPinnedTooLongIsNamed) {
  auto c = amt::run_scenario("epoch_long_pin", {{"AMALLOC_EPOCH_WARN_MS", "100"}});
  ASSERT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_NE(c.err.find("amalloc: epoch: thread "), std::string::npos) << c.describe();
  EXPECT_NE(c.err.find(" (am-pinner) has stayed pinned for over "), std::string::npos)
      << c.describe();
  auto quiet = amt::run_scenario("epoch_long_pin", {{"AMALLOC_EPOCH_WARN_MS", "0"}});
  ASSERT_TRUE(quiet.exited_ok()) << quiet.describe();
  EXPECT_EQ(quiet.err.find("has stayed pinned"), std::string::npos) << quiet.describe();
}

// ---- the fence fallback (no membarrier) ----------------------------------------------

// Readers under guards against a writer that replaces a cell, waits for a
// grace period and poisons the old one: with fences on every pin instead of
// membarrier, no reader may see a poisoned cell.
int readers_and_a_writer() {
  auto* first = static_cast<Cell*>(am_malloc(sizeof(Cell)));
  first->alive = kAlive;
  g_shared = first;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0}, reads{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; t++)
    readers.emplace_back([&] {
      while (!stop) {
        amalloc::epoch::guard g;
        Cell* c = g_shared.load(std::memory_order_acquire);
        for (int i = 0; i < 64; i++)
          if (c->alive.load(std::memory_order_relaxed) != kAlive) bad++;
        reads++;
      }
    });
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t swaps = 0;
  while (std::chrono::steady_clock::now() - t0 < 300ms) {
    auto* c = static_cast<Cell*>(am_malloc(sizeof(Cell)));
    c->alive = kAlive;
    Cell* old = g_shared.exchange(c);
    am_epoch_synchronize();
    old->alive = 0xDEAD;
    am_free(old);
    swaps++;
  }
  stop = true;
  for (auto& t : readers) t.join();
  std::printf("swaps %llu reads %llu bad %llu\n", static_cast<unsigned long long>(swaps),
              static_cast<unsigned long long>(reads.load()),
              static_cast<unsigned long long>(bad.load()));
  return bad.load() == 0 && swaps > 10 ? 0 : 1;
}

AMT_SCENARIO(epoch_fences) {
  if (am_epoch_reader_fence_ != 1) {
    std::printf("membarrier still in use\n");
    return 2;
  }
  return readers_and_a_writer();
}

// membarrier refused after registration (a seccomp filter on every thread):
// readers switch to fences, and grace periods go on. Exit 77: cannot test.
AMT_SCENARIO(epoch_membarrier_fails) {
  am_epoch_synchronize();  // registered
  if (am_epoch_reader_fence_ != 0) return 77;
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_membarrier, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {4, f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
    return 77;
  int rc = readers_and_a_writer();
  if (am_epoch_reader_fence_ != 1) {
    std::printf("readers still rely on membarrier\n");
    return 1;
  }
  return rc;
}

TEST(EpochGuarantees, WithoutMembarrierReadersFenceAndGracePeriodsHold) {
  auto c = amt::run_scenario("epoch_fences", {{"AMALLOC_EPOCH_MEMBARRIER", "0"}});
  EXPECT_TRUE(c.exited_ok()) << c.describe();
}

TEST(EpochGuarantees, AMembarrierThatFailsLaterSwitchesReadersToFences) {
  auto c = amt::run_scenario("epoch_membarrier_fails", {});
  if (WIFEXITED(c.wait_status) && WEXITSTATUS(c.wait_status) == 77)
    GTEST_SKIP() << "no membarrier, or no seccomp filter here";
  EXPECT_TRUE(c.exited_ok()) << c.describe();
  EXPECT_NE(c.err.find("membarrier(2) failed after it was registered; readers fence"),
            std::string::npos)
      << c.describe();
}

// ---- test builds: reclaimed blocks are filled -----------------------------------------

#ifdef AMALLOC_POISON
TEST(EpochGuarantees, TestBuildsFillReclaimedBlocks) {
  auto* p = static_cast<unsigned char*>(am_malloc(512));
  memset(p, 0x11, 512);
  am_retire(p);
  am_epoch_barrier();
  // The first word may hold the free list's link; the rest is the pattern
  // (amalloc's pages are its own mappings, so reading them is defined here).
  EXPECT_EQ(amt::check_bytes(p + 16, 512 - 16, 0xDE), SIZE_MAX);
}
#endif

}  // namespace
