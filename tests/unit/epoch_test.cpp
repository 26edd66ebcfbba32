// The epoch collector's guarantees, one at a time: a node retired while a
// reader is pinned is not reclaimed before that reader unpins (checked
// across threads, with the deleter poisoning the node); it is reclaimed
// once every pin that could see it is gone; pins nest; synchronize waits
// for a reader pinned on another thread; retirements outlive their thread
// and survive fork; deleters may retire, allocate and free; executors in
// quiescent-state mode hold reclamation up exactly until their idle point
// (or while offline, not at all); am_epoch_stats counts.
//
// A wait that should end and does not aborts the test program with a
// message (a deadlock is a failure, not a hang until ctest's timeout).
#include <amalloc/amalloc.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <amalloc/amalloc.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "amalloc_test_support.h"

namespace {

using u64 = std::uint64_t;
using namespace std::chrono_literals;

// How long a wait that must end may take before the test is declared hung,
// and how long we watch a wait that must not end.
constexpr auto kHang = 60s;
constexpr auto kQuiet = 150ms;

[[noreturn]] void hung(const char* what) {
  std::fprintf(stderr, "epoch test: TIMEOUT after %llds: %s (deadlock?)\n",
               static_cast<long long>(kHang.count()), what);
  std::fflush(stderr);
  std::abort();
}

// Spins (yielding) until pred() holds; aborts after kHang.
template <class P>
void wait_until(P pred, const char* what) {
  auto deadline = std::chrono::steady_clock::now() + kHang;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) hung(what);
    std::this_thread::sleep_for(100us);
  }
}

// A counter that deleters bump.
void count_fn(void*, void* ctx) {
  static_cast<std::atomic<u64>*>(ctx)->fetch_add(1, std::memory_order_relaxed);
}

// A node that records whether it was reclaimed: the deleter poisons it.
struct Tracked {
  static constexpr u64 kAlive = 0xA11FEA11FEA11FEULL;
  static constexpr u64 kDead = 0xDEADBEEFDEADBEEFULL;
  u64 state;
  u64 payload[6];
};

void poison_fn(void* p, void* ctx) {
  auto* t = static_cast<Tracked*>(p);
  std::atomic_ref<u64>(t->state).store(Tracked::kDead, std::memory_order_relaxed);
  for (u64& w : t->payload) std::atomic_ref<u64>(w).store(Tracked::kDead);
  static_cast<std::atomic<u64>*>(ctx)->fetch_add(1, std::memory_order_relaxed);
}

Tracked* new_tracked(u64 seed) {
  auto* t = static_cast<Tracked*>(am_malloc(sizeof(Tracked)));
  t->state = Tracked::kAlive;
  for (int i = 0; i < 6; ++i) t->payload[i] = amt::mix64(seed + static_cast<u64>(i));
  return t;
}

bool intact(const Tracked* t, u64 seed) {
  if (std::atomic_ref<const u64>(t->state).load(std::memory_order_relaxed) != Tracked::kAlive)
    return false;
  for (int i = 0; i < 6; ++i)
    if (std::atomic_ref<const u64>(t->payload[i]).load(std::memory_order_relaxed) !=
        amt::mix64(seed + static_cast<u64>(i)))
      return false;
  return true;
}

// Runs fn on its own thread; done() tells whether it has returned.
class Async {
 public:
  explicit Async(std::function<void()> fn)
      : done_(std::make_shared<std::atomic<bool>>(false)), t_([fn = std::move(fn), d = done_] {
          fn();
          d->store(true);
        }) {}
  ~Async() {
    if (t_.joinable()) join("a background call");
  }
  bool done() const { return done_->load(); }
  // Waits for fn to return (aborts after kHang).
  void join(const char* what) {
    wait_until([&] { return done(); }, what);
    t_.join();
  }

 private:
  std::shared_ptr<std::atomic<bool>> done_;
  std::thread t_;
};

// A thread that pins, holds the pin until told, then unpins.
class PinnedReader {
 public:
  PinnedReader()
      : t_([this] {
          am_epoch_enter();
          step_.store(1);
          wait_until([&] { return release_.load(); }, "reader waiting for release");
          am_epoch_exit();
          step_.store(2);
          wait_until([&] { return quit_.load(); }, "reader waiting to quit");
        }) {
    wait_until([&] { return step_.load() >= 1; }, "reader pinning");
  }
  ~PinnedReader() {
    unpin();
    quit_.store(true);
    t_.join();
  }
  void unpin() {
    release_.store(true);
    wait_until([&] { return step_.load() >= 2; }, "reader unpinning");
  }

 private:
  std::atomic<int> step_{0};
  std::atomic<bool> release_{false}, quit_{false};
  std::thread t_;
};

am_epoch_stats_t epoch_stats() {
  am_epoch_stats_t s{};
  am_epoch_stats(&s);
  return s;
}

// Retires `n` blocks of `size` bytes, counting their deleters in `ctr`.
void retire_counted(std::size_t n, std::size_t size, std::atomic<u64>& ctr) {
  for (std::size_t i = 0; i < n; ++i) am_retire_fn(am_malloc(size), count_fn, &ctr);
}

// Gives the collector every chance to reclaim (without a barrier, which
// would wait): retirements that fill and seal batches (each tries an advance
// and a reclamation), and an idle point. Fewer than would make am_retire
// wait for a grace period (see RetireDoesNotWaitFor* below).
void churn_collector() {
  for (int i = 0; i < 2000; ++i) am_retire(am_malloc(32));
  am_executor_idle();
  std::this_thread::sleep_for(20ms);  // and a background worker, if any, its turn
}

// ---- pins and grace periods -------------------------------------------------------

TEST(Epoch, PinnedReaderStillSeesNodeRetiredAfterItPinned) {
  std::atomic<Tracked*> slot{new_tracked(1)};
  std::atomic<u64> reclaimed{0};
  std::atomic<int> step{0};
  std::atomic<bool> reader_ok{true};
  std::thread reader([&] {
    amalloc::epoch::guard g;
    Tracked* t = slot.load(std::memory_order_acquire);
    step.store(1);
    // The writer unlinks and retires t, and churns the collector.
    wait_until([&] { return step.load() == 2; }, "reader waiting for the retirement");
    for (int i = 0; i < 50; ++i) {
      if (!intact(t, 1)) reader_ok.store(false);
      std::this_thread::sleep_for(1ms);
    }
    step.store(3);
    wait_until([&] { return step.load() == 4; }, "reader waiting to unpin");
  });
  wait_until([&] { return step.load() == 1; }, "reader pinning");
  Tracked* t = slot.exchange(nullptr);
  am_retire_fn(t, poison_fn, &reclaimed);
  std::atomic<u64> later{0};
  retire_counted(1000, 48, later);  // also retired after the reader pinned
  churn_collector();
  Async sync([] { am_epoch_synchronize(); });
  step.store(2);
  wait_until([&] { return step.load() == 3; }, "reader checking");
  EXPECT_TRUE(reader_ok.load()) << "the retired node changed while the reader held its pin";
  EXPECT_EQ(reclaimed.load(), 0u) << "reclaimed while a reader that could see it is pinned";
  EXPECT_EQ(later.load(), 0u) << "nodes retired after the reader pinned were reclaimed";
  EXPECT_FALSE(sync.done()) << "am_epoch_synchronize returned while a reader is pinned";
  step.store(4);
  reader.join();
  sync.join("am_epoch_synchronize after the reader unpinned");
  amalloc::epoch::barrier();
  EXPECT_EQ(reclaimed.load(), 1u);
  EXPECT_EQ(later.load(), 1000u);
}

TEST(Epoch, ReclaimedOnceNoPinCanSeeIt) {
  std::atomic<u64> n{0};
  retire_counted(100, 64, n);
  for (int i = 0; i < 100; ++i) am_retire(am_malloc(static_cast<std::size_t>(i) * 40));
  amalloc::epoch::barrier();
  EXPECT_EQ(n.load(), 100u) << "every deleter has run after am_epoch_barrier";
  // A reader that pinned and unpinned before the retirement does not delay it.
  {
    PinnedReader r;
    r.unpin();
    retire_counted(10, 64, n);
    Async b([] { am_epoch_barrier(); });
    b.join("am_epoch_barrier with no reader pinned");
    EXPECT_EQ(n.load(), 110u);
  }
  // Nor does a reader on another thread once it unpins.
  {
    PinnedReader r;
    retire_counted(10, 64, n);
    Async b([] { am_epoch_barrier(); });
    std::this_thread::sleep_for(kQuiet);
    EXPECT_FALSE(b.done()) << "am_epoch_barrier returned while a reader is pinned";
    EXPECT_EQ(n.load(), 110u);
    r.unpin();
    b.join("am_epoch_barrier after the reader unpinned");
    EXPECT_EQ(n.load(), 120u);
  }
}

TEST(Epoch, SynchronizeWaitsForReaderPinnedOnAnotherThread) {
  PinnedReader r;
  Async s([] { amalloc::epoch::synchronize(); });
  std::this_thread::sleep_for(kQuiet);
  EXPECT_FALSE(s.done()) << "am_epoch_synchronize returned while another thread is pinned";
  r.unpin();
  s.join("am_epoch_synchronize after the reader unpinned");
}

TEST(Epoch, PinsNest) {
  std::atomic<int> step{0};
  std::thread reader([&] {
    am_epoch_enter();
    {
      amalloc::epoch::guard inner;  // nested in the C pin
      am_epoch_enter();
      am_epoch_exit();
    }
    step.store(1);  // still pinned by the outer enter
    wait_until([&] { return step.load() == 2; }, "reader waiting");
    am_epoch_exit();
    step.store(3);
  });
  wait_until([&] { return step.load() == 1; }, "reader nesting");
  std::atomic<u64> n{0};
  retire_counted(5, 64, n);
  Async s([] { am_epoch_barrier(); });
  std::this_thread::sleep_for(kQuiet);
  EXPECT_FALSE(s.done()) << "an inner unpin ended the outer pin";
  EXPECT_EQ(n.load(), 0u);
  step.store(2);
  s.join("am_epoch_barrier after the outermost unpin");
  EXPECT_EQ(n.load(), 5u);
  reader.join();
}

TEST(Epoch, SynchronizeEndsWhileReadersKeepPinning) {
  // Two readers pin and unpin in a loop with overlapping pins: at almost
  // every moment some pin is held. Grace periods must still end.
  std::atomic<bool> stop{false};
  std::atomic<u64> pins{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t)
    readers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        amalloc::epoch::guard g;
        for (int i = 0; i < 200; ++i) asm volatile("" ::: "memory");
        pins.fetch_add(1, std::memory_order_relaxed);
      }
    });
  // The readers must be pinning before the grace periods start (on a busy
  // machine the 50 can end before a reader thread first runs).
  while (pins.load(std::memory_order_relaxed) < 2) std::this_thread::yield();
  std::atomic<u64> n{0};
  Async s([&] {
    for (int i = 0; i < 50; ++i) {
      retire_counted(10, 64, n);
      amalloc::epoch::synchronize();
      if (i % 10 == 0) amalloc::epoch::barrier();
    }
    amalloc::epoch::barrier();
  });
  s.join("50 grace periods while two readers keep pinning");
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(n.load(), 500u);
  EXPECT_GT(pins.load(), 0u);
}

TEST(Epoch, SynchronizeWhilePinnedReturnsAtOnce) {
  std::string err = amt::capture_stderr([] {
    amalloc::epoch::guard g;
    am_epoch_synchronize();  // a misuse: reported, returns
  });
  EXPECT_FALSE(err.empty()) << "am_epoch_synchronize while pinned should be reported";
  std::printf("reported: %s", err.c_str());
}

// ---- threads, fork ----------------------------------------------------------------

TEST(Epoch, ThreadExitWithPendingRetirements) {
  std::atomic<u64> n{0};
  am_epoch_stats_t before = epoch_stats();
  {
    PinnedReader r;  // keeps everything below pending until it unpins
    std::thread([&] {
      retire_counted(1000, 100, n);
      for (int i = 0; i < 500; ++i) am_retire(am_malloc(1000));
      amalloc::retire(new std::string(100, 'x'));
    }).join();  // exits with its retirements pending
    std::thread([&] {
      amalloc::epoch::executor ex;
      retire_counted(100, 5000, n);
    }).join();
    EXPECT_EQ(n.load(), 0u);
    am_epoch_stats_t mid = epoch_stats();
    EXPECT_EQ(mid.retired - before.retired, 1601u);
    EXPECT_EQ(mid.pending - before.pending, 1601u);
    EXPECT_GT(mid.pending_bytes, 1000u * 100 + 500u * 1000 + 100u * 5000 - 1);
    r.unpin();
  }
  amalloc::epoch::barrier();  // from another thread than the retiring ones
  EXPECT_EQ(n.load(), 1100u) << "retirements of exited threads are reclaimed by a later barrier";
  am_epoch_stats_t after = epoch_stats();
  EXPECT_EQ(after.reclaimed - before.reclaimed, 1601u);
  EXPECT_EQ(after.pending, 0u);
  EXPECT_EQ(after.pending_bytes, 0u);
}

// Waits for `pid` up to 60 s (then kills it).
int wait_child(pid_t pid, bool* timed_out) {
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + kHang;
  *timed_out = false;
  for (;;) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) return status;
    if (w < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      *timed_out = true;
      return status;
    }
    std::this_thread::sleep_for(1ms);
  }
}

// In a fork child: report and leave without running anything of the parent.
[[noreturn]] void child_exit(int code, const char* what) {
  if (what) std::fprintf(stderr, "epoch fork child: %s\n", what);
  std::fflush(stderr);
  _exit(code);
}

TEST(Epoch, ForkWithPendingRetirements) {
  std::atomic<u64> parent_n{0};
  PinnedReader r;  // pinned in the parent; does not exist in the child
  std::atomic<bool> exec_quit{false};
  std::atomic<int> exec_ready{0};
  // An executor that has stopped at an idle point (not offline): in the
  // parent it holds reclamation up; in the child it is gone.
  std::thread executor_thread([&] {
    amalloc::epoch::executor ex;
    am_executor_idle();
    exec_ready.store(1);
    wait_until([&] { return exec_quit.load(); }, "executor waiting to quit");
  });
  struct Joiner {  // also when an ASSERT returns early
    std::atomic<bool>& quit;
    std::thread& t;
    ~Joiner() {
      quit.store(true);
      if (t.joinable()) t.join();
    }
  } joiner{exec_quit, executor_thread};
  wait_until([&] { return exec_ready.load() == 1; }, "executor registering");
  retire_counted(100, 64, parent_n);
  for (int round = 0; round < 3; ++round) {
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = fork();
    ASSERT_GE(pid, 0) << std::strerror(errno);
    if (pid == 0) {
      // The child: one thread; the parent's reader and executor are gone.
      std::atomic<u64> child_n{0};
      retire_counted(50, 64, child_n);
      {
        amalloc::epoch::guard g;
        am_retire(am_malloc(100));
      }
      am_epoch_synchronize();
      am_epoch_barrier();
      if (child_n.load() != 50) child_exit(2, "own retirements not reclaimed after barrier");
      if (parent_n.load() != 100)
        child_exit(3, "retirements pending at fork not reclaimed by the child's barrier");
      // Again, with nested pins and a deleter chain through the defer API.
      am_epoch_enter();
      am_epoch_enter();
      am_epoch_exit();
      am_epoch_exit();
      retire_counted(10, 2000, child_n);
      am_epoch_barrier();
      if (child_n.load() != 60) child_exit(4, "second barrier in the child");
      am_epoch_stats_t s{};
      am_epoch_stats(&s);
      if (s.pending != 0) child_exit(5, "pending retirements after barrier in the child");
      child_exit(0, nullptr);
    }
    bool timed_out = false;
    int status = wait_child(pid, &timed_out);
    ASSERT_FALSE(timed_out) << "fork child hung (barrier waiting for a thread of the parent?)";
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "fork child failed: status " << status
        << (WIFEXITED(status) ? " exit code " + std::to_string(WEXITSTATUS(status)) : "");
  }
  // The parent: still pinned by its reader and its executor.
  EXPECT_EQ(parent_n.load(), 0u) << "reclaimed in the parent while its reader is pinned";
  Async b([] { am_epoch_barrier(); });
  std::this_thread::sleep_for(kQuiet);
  EXPECT_FALSE(b.done());
  r.unpin();
  std::this_thread::sleep_for(kQuiet);
  EXPECT_FALSE(b.done()) << "the executor has not passed an idle point since";
  exec_quit.store(true);  // ~executor unregisters it
  executor_thread.join();
  b.join("am_epoch_barrier in the parent after the fork");
  EXPECT_EQ(parent_n.load(), 100u) << "each deleter runs once in the parent";
  // The parent goes on working.
  retire_counted(10, 64, parent_n);
  amalloc::epoch::barrier();
  EXPECT_EQ(parent_n.load(), 110u);
}

// ---- deleters ---------------------------------------------------------------------

struct Chain {
  std::atomic<u64> done{0};
  std::vector<void*> nodes;
};

void chain_fn(void* p, void* ctx) {
  auto* c = static_cast<Chain*>(ctx);
  u64 i = *static_cast<u64*>(p);
  c->done.fetch_add(1);
  if (i + 1 < c->nodes.size()) am_retire_fn(c->nodes[i + 1], chain_fn, c);
}

// Each deleter retires its two children: a tree of retirements.
struct Tree {
  std::atomic<u64> done{0};
  unsigned depth = 0;
};

void tree_fn(void* p, void* ctx) {
  auto* t = static_cast<Tree*>(ctx);
  unsigned level = *static_cast<unsigned*>(p);
  t->done.fetch_add(1);
  if (level + 1 < t->depth)
    for (int k = 0; k < 2; ++k) {
      auto* child = static_cast<unsigned*>(am_malloc(sizeof(unsigned) * 4));
      *child = level + 1;
      am_retire_fn(child, tree_fn, t);
    }
}

TEST(Epoch, DeletersThatRetire) {
  Chain c;
  for (u64 i = 0; i < 200; ++i) {
    auto* p = static_cast<u64*>(am_malloc(sizeof(u64) * 2));
    *p = i;
    c.nodes.push_back(p);
  }
  am_retire_fn(c.nodes[0], chain_fn, &c);
  int barriers = 0;
  while (c.done.load() < 200 && barriers < 1000) {
    amalloc::epoch::barrier();
    ++barriers;
  }
  EXPECT_EQ(c.done.load(), 200u) << "a chain of retirements made by deleters";
  EXPECT_LE(barriers, 201) << "each barrier reclaims at least the retirements made before it";

  Tree t;
  t.depth = 9;  // 511 nodes
  auto* root = static_cast<unsigned*>(am_malloc(sizeof(unsigned) * 4));
  *root = 0;
  am_retire_fn(root, tree_fn, &t);
  barriers = 0;
  while (t.done.load() < 511 && barriers < 100) {
    amalloc::epoch::barrier();
    ++barriers;
  }
  EXPECT_EQ(t.done.load(), 511u);
  amalloc::epoch::barrier();
  EXPECT_EQ(epoch_stats().pending, 0u);
}

struct AllocCtx {
  std::atomic<u64> runs{0};
  std::atomic<u64> bad{0};
};

void allocating_fn(void* p, void* ctx) {
  auto* c = static_cast<AllocCtx*>(ctx);
  u64 seed = *static_cast<u64*>(p);
  amt::Rng rng(seed);
  // Small, medium, large blocks and a realloc, all freed here.
  std::vector<std::pair<void*, std::size_t>> blocks;
  for (std::size_t n : {std::size_t{16}, std::size_t{700}, std::size_t{20000}, std::size_t{300000},
                        static_cast<std::size_t>(rng.range(1, 5000))}) {
    void* b = am_malloc(n);
    amt::fill_pattern(b, n, seed + n);
    blocks.emplace_back(b, n);
  }
  void* r = am_realloc(am_malloc(100), 100000);
  am_free(r);
  for (auto& [b, n] : blocks) {
    if (amt::check_pattern(b, n, seed + n) != SIZE_MAX) c->bad.fetch_add(1);
    am_free(b);
  }
  // And a block that lives on, retired for later.
  void* later = am_malloc(128);
  *static_cast<u64*>(later) = seed + 1;
  am_retire(later);
  c->runs.fetch_add(1);
}

TEST(Epoch, DeletersThatAllocateAndFree) {
  u64 bad_before = amt::stats().bad_frees;
  AllocCtx ctx;
  std::vector<std::thread> th;
  for (int t = 0; t < 3; ++t)
    th.emplace_back([&, t] {
      for (u64 i = 0; i < 200; ++i) {
        auto* p = static_cast<u64*>(am_malloc(64));
        *p = static_cast<u64>(t) * 1000 + i;
        am_retire_fn(p, allocating_fn, &ctx);
        if (i % 50 == 0) am_epoch_barrier();  // deleters may run on this thread now
      }
    });
  for (auto& x : th) x.join();
  amalloc::epoch::barrier();
  EXPECT_EQ(ctx.runs.load(), 600u);
  EXPECT_EQ(ctx.bad.load(), 0u);
  amalloc::epoch::barrier();  // the blocks the deleters retired
  EXPECT_EQ(epoch_stats().pending, 0u);
  EXPECT_EQ(amt::stats().bad_frees, bad_before);
}

TEST(Epoch, DeferPassesPointerAndContext) {
  struct Seen {
    std::atomic<u64> calls{0};
    std::atomic<void*> p{nullptr};
  } seen;
  am_epoch_defer(
      reinterpret_cast<void*>(std::uintptr_t{42}),
      [](void* p, void* ctx) {
        auto* s = static_cast<Seen*>(ctx);
        s->p.store(p);
        s->calls.fetch_add(1);
      },
      &seen);
  // A block of another allocator, released by the callback.
  int* other = static_cast<int*>(std::malloc(sizeof(int)));
  *other = 7;
  std::atomic<int> freed{0};
  am_epoch_defer(
      other,
      [](void* p, void* ctx) {
        static_cast<std::atomic<int>*>(ctx)->store(*static_cast<int*>(p));
        std::free(p);
      },
      &freed);
  amalloc::epoch::barrier();
  EXPECT_EQ(seen.calls.load(), 1u);
  EXPECT_EQ(seen.p.load(), reinterpret_cast<void*>(std::uintptr_t{42}));
  EXPECT_EQ(freed.load(), 7);
}

struct Counted {
  static inline std::atomic<int> destroyed{0};
  std::string s = std::string(64, 'c');  // a member with a destructor of its own
  ~Counted() { destroyed.fetch_add(1); }
};

TEST(Epoch, CppRetireRunsDestructorOrDeleter) {
  Counted::destroyed.store(0);
  {
    PinnedReader r;
    amalloc::retire(new Counted);
    amalloc::retire(new Counted);
    churn_collector();
    EXPECT_EQ(Counted::destroyed.load(), 0);
  }
  amalloc::epoch::barrier();
  EXPECT_EQ(Counted::destroyed.load(), 2) << "amalloc::retire(T*) runs ~T after a grace period";

  // With a deleter that owns state (moved into the collector).
  auto calls = std::make_shared<std::atomic<int>>(0);
  std::string label(100, 'L');
  void* block = am_malloc(256);
  std::memset(block, 0x5A, 256);
  {
    PinnedReader r;
    amalloc::retire(static_cast<unsigned char*>(block), [calls, label](unsigned char* p) {
      if (label.size() == 100 && p[0] == 0x5A && p[255] == 0x5A) calls->fetch_add(1);
      am_free(p);
    });
    churn_collector();
    EXPECT_EQ(calls->load(), 0);
  }
  amalloc::epoch::barrier();
  EXPECT_EQ(calls->load(), 1) << "the deleter ran once, with its captured state";
  EXPECT_EQ(calls.use_count(), 1) << "the collector destroyed its copy of the deleter";
}

// ---- executors (quiescent-state mode) -----------------------------------------------

// An executor thread driven by the test: it runs its loop (idle point every
// 100 µs) while `idling`, otherwise waits without passing an idle point.
class Executor {
 public:
  Executor()
      : t_([this] {
          amalloc::epoch::executor ex;
          am_executor_idle();
          registered_.store(true);
          while (!quit_.load()) {
            int c = cmd_.load();
            if (c == kIdle) am_executor_idle();
            if (c == kOffline && !offline_) {
              am_epoch_offline();
              offline_ = true;
            }
            if (c != kOffline && offline_) {
              am_epoch_online();
              offline_ = false;
            }
            if (c == kGuardThenStop && !guarded_) {
              { amalloc::epoch::guard g; }  // nested in the permanent pin
              guarded_ = true;
            }
            seen_.store(c);
            std::this_thread::sleep_for(100us);
          }
          if (offline_) am_epoch_online();
        }) {
    wait_until([&] { return registered_.load(); }, "executor registering");
  }
  ~Executor() {
    quit_.store(true);
    t_.join();
  }
  static constexpr int kIdle = 0, kStop = 1, kOffline = 2, kGuardThenStop = 3;
  // Sets the loop's mode and waits until the thread has seen it.
  void set(int c) {
    cmd_.store(c);
    seen_.store(-1);
    wait_until([&] { return seen_.load() == c; }, "executor taking a command");
  }

 private:
  std::atomic<int> cmd_{kIdle}, seen_{-1};
  std::atomic<bool> registered_{false}, quit_{false};
  bool offline_ = false, guarded_ = false;
  std::thread t_;
};

TEST(Epoch, IdlingExecutorDoesNotBlockReclamation) {
  Executor e;
  std::atomic<u64> n{0};
  retire_counted(100, 64, n);
  Async b([] { am_epoch_barrier(); });
  b.join("am_epoch_barrier while an executor passes its idle point");
  EXPECT_EQ(n.load(), 100u);
  Async s([] { am_epoch_synchronize(); });
  s.join("am_epoch_synchronize while an executor passes its idle point");
}

TEST(Epoch, ExecutorThatStopsIdlingBlocksReclamation) {
  Executor e;
  e.set(Executor::kStop);  // registered, online, no more idle points
  std::atomic<u64> n{0};
  retire_counted(10, 64, n);
  Async b([] { am_epoch_barrier(); });
  churn_collector();
  std::this_thread::sleep_for(kQuiet);
  EXPECT_FALSE(b.done()) << "am_epoch_barrier returned while an executor is between idle points";
  EXPECT_EQ(n.load(), 0u) << "reclaimed while an executor could still hold the nodes";
  e.set(Executor::kIdle);
  b.join("am_epoch_barrier once the executor idles again");
  EXPECT_EQ(n.load(), 10u);
}

TEST(Epoch, OfflineExecutorDoesNotBlockReclamation) {
  Executor e;
  e.set(Executor::kOffline);  // offline, asleep
  std::atomic<u64> n{0};
  retire_counted(10, 64, n);
  Async b([] { am_epoch_barrier(); });
  b.join("am_epoch_barrier while the only executor is offline");
  EXPECT_EQ(n.load(), 10u);
  // Online again without an idle point: holds reclamation up again.
  e.set(Executor::kStop);
  retire_counted(10, 64, n);
  Async b2([] { am_epoch_barrier(); });
  std::this_thread::sleep_for(kQuiet);
  EXPECT_FALSE(b2.done()) << "an executor back online counts as pinned until its idle point";
  e.set(Executor::kIdle);
  b2.join("am_epoch_barrier once the executor idles");
  EXPECT_EQ(n.load(), 20u);
}

TEST(Epoch, GuardOnExecutorNestsInItsPermanentPin) {
  Executor e;
  e.set(Executor::kGuardThenStop);  // a guard taken and released, then no idle point
  std::atomic<u64> n{0};
  retire_counted(10, 64, n);
  Async b([] { am_epoch_barrier(); });
  std::this_thread::sleep_for(kQuiet);
  EXPECT_FALSE(b.done()) << "releasing a guard ended an executor's permanent pin";
  e.set(Executor::kIdle);
  b.join("am_epoch_barrier once the executor idles");
  EXPECT_EQ(n.load(), 10u);
}

TEST(Epoch, UnregisteredOrExitedExecutorDoesNotBlock) {
  std::atomic<int> step{0};
  std::thread unreg([&] {
    am_epoch_executor_register();
    am_executor_idle();
    am_epoch_executor_unregister();
    step.store(1);
    wait_until([&] { return step.load() == 2; }, "unregistered executor waiting");
  });
  wait_until([&] { return step.load() == 1; }, "executor unregistering");
  // An executor thread that exits while registered (no unregister).
  std::thread([] {
    am_epoch_executor_register();
    am_executor_idle();
  }).join();
  std::atomic<u64> n{0};
  retire_counted(10, 64, n);
  Async b([] { am_epoch_barrier(); });
  b.join("am_epoch_barrier with an unregistered executor and an exited one");
  EXPECT_EQ(n.load(), 10u);
  step.store(2);
  unreg.join();
}

TEST(Epoch, ExecutorsMixedWithGuardedThreads) {
  std::atomic<bool> stop{false};
  std::atomic<u64> n{0}, reader_ops{0};
  std::vector<std::thread> th;
  // Two executors: loops that retire and idle; one goes offline now and then.
  for (int t = 0; t < 2; ++t)
    th.emplace_back([&, t] {
      amalloc::epoch::executor ex;
      u64 i = 0;
      while (!stop.load()) {
        retire_counted(4, 48, n);
        am_executor_idle();
        if (t == 1 && ++i % 16 == 0) {
          am_epoch_offline();
          std::this_thread::sleep_for(200us);
          am_epoch_online();
        }
      }
    });
  // Two threads with guards.
  for (int t = 0; t < 2; ++t)
    th.emplace_back([&] {
      while (!stop.load()) {
        amalloc::epoch::guard g;
        retire_counted(1, 48, n);
        reader_ops.fetch_add(1);
      }
    });
  std::atomic<u64> mine{0};
  for (int round = 0; round < 20; ++round) {
    retire_counted(50, 64, mine);
    Async b([] { am_epoch_barrier(); });
    b.join("am_epoch_barrier with executors and guarded threads running");
    EXPECT_EQ(mine.load(), static_cast<u64>(round + 1) * 50);
  }
  // A guard held on one thread holds up reclamation though executors idle.
  {
    PinnedReader r;
    std::atomic<u64> held{0};
    retire_counted(5, 64, held);
    Async b([] { am_epoch_barrier(); });
    std::this_thread::sleep_for(kQuiet);
    EXPECT_FALSE(b.done());
    EXPECT_EQ(held.load(), 0u);
    r.unpin();
    b.join("am_epoch_barrier after the guard is released");
    EXPECT_EQ(held.load(), 5u);
  }
  stop.store(true);
  for (auto& t : th) t.join();
  amalloc::epoch::barrier();
  am_epoch_stats_t s = epoch_stats();
  EXPECT_EQ(s.pending, 0u);
  EXPECT_GT(reader_ops.load(), 0u);
}

// ---- am_retire never waits for another thread's pin --------------------------------

// am_retire "frees p after a grace period": it must not itself wait for
// one. A retiring thread often holds a lock, and a pinned thread (or an
// online executor between idle points) may be waiting for that lock or for
// the retiring thread: waiting in am_retire for their grace period is then
// a deadlock. These tests give the retiring thread kGiveUp to retire 20,000
// blocks (many more than a few batches) while the other thread waits for it;
// then the other thread gives up (unpins or idles) so that a failure is
// reported instead of hanging.
constexpr auto kGiveUp = 10s;
constexpr int kManyRetirements = 20000;

TEST(Epoch, RetireDoesNotWaitForAnExecutorBlockedOnTheRetirersLock) {
  std::mutex m;
  std::atomic<int> step{0};
  std::atomic<bool> gave_up{false};
  std::unique_lock<std::mutex> held(m);  // the writer's lock
  std::thread exec([&] {
    amalloc::epoch::executor ex;
    am_executor_idle();
    step.store(1);
    // A handler that needs the writer's lock (no idle point while it waits).
    auto deadline = std::chrono::steady_clock::now() + kGiveUp;
    std::unique_lock<std::mutex> l(m, std::defer_lock);
    while (!l.try_lock()) {
      if (std::chrono::steady_clock::now() > deadline && !gave_up.load()) {
        gave_up.store(true);
        am_epoch_offline();  // let the writer go on, then report
      }
      std::this_thread::sleep_for(100us);
    }
    if (gave_up.load()) am_epoch_online();
    l.unlock();
    am_executor_idle();
  });
  wait_until([&] { return step.load() == 1; }, "executor starting");
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kManyRetirements; ++i) am_retire(am_malloc(64));  // under the lock
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  held.unlock();
  exec.join();
  EXPECT_FALSE(gave_up.load())
      << "am_retire blocked (" << secs << " s for " << kManyRetirements
      << " retirements) until an executor that was waiting for the retiring thread's lock went "
         "offline: a deadlock without the test's time limit";
  amalloc::epoch::barrier();
  EXPECT_EQ(epoch_stats().pending, 0u);
}

TEST(Epoch, RetireDoesNotWaitForAPinnedThreadWaitingForTheRetirer) {
  std::atomic<int> step{0};
  std::atomic<bool> gave_up{false};
  std::thread reader([&] {
    amalloc::epoch::guard g;
    step.store(1);
    auto deadline = std::chrono::steady_clock::now() + kGiveUp;
    while (step.load() != 2) {
      if (std::chrono::steady_clock::now() > deadline) {
        gave_up.store(true);
        break;
      }
      std::this_thread::sleep_for(100us);
    }
  });
  wait_until([&] { return step.load() == 1; }, "reader pinning");
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kManyRetirements; ++i) am_retire(am_malloc(64));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  step.store(2);
  reader.join();
  EXPECT_FALSE(gave_up.load())
      << "am_retire blocked (" << secs << " s for " << kManyRetirements
      << " retirements) until a pinned thread that was waiting for the retiring thread unpinned";
  amalloc::epoch::barrier();
  EXPECT_EQ(epoch_stats().pending, 0u);
}

// ---- stats ------------------------------------------------------------------------

TEST(Epoch, StatsCountRetiredReclaimedPending) {
  am_epoch_stats_t before = epoch_stats();
  std::atomic<u64> n{0};
  {
    PinnedReader r;
    am_epoch_stats_t pinned = epoch_stats();
    EXPECT_GE(pinned.threads, 1u) << "the pinned reader is registered";
    for (int i = 0; i < 100; ++i) am_retire(am_malloc(200));
    retire_counted(50, 1000, n);
    for (int i = 0; i < 10; ++i)
      am_epoch_defer(reinterpret_cast<void*>(std::uintptr_t{1}), count_fn, &n);
    am_epoch_stats_t mid = epoch_stats();
    EXPECT_EQ(mid.retired - before.retired, 160u);
    EXPECT_EQ(mid.reclaimed, before.reclaimed) << "nothing reclaimed while the reader is pinned";
    EXPECT_EQ(mid.pending, mid.retired - mid.reclaimed);
    EXPECT_EQ(mid.pending - before.pending, 160u);
    EXPECT_GE(mid.pending_bytes, 100u * 200 + 50u * 1000) << "pending_bytes while pending";
    EXPECT_LE(mid.pending_bytes, 100u * 256 + 50u * 1152 + 10u * 64)
        << "pending_bytes: amalloc block sizes";
    r.unpin();
  }
  amalloc::epoch::barrier();
  am_epoch_stats_t after = epoch_stats();
  EXPECT_EQ(n.load(), 60u);
  EXPECT_EQ(after.retired - before.retired, 160u);
  EXPECT_EQ(after.reclaimed - before.reclaimed, 160u);
  EXPECT_EQ(after.pending, 0u);
  EXPECT_EQ(after.pending_bytes, 0u);
  EXPECT_GT(after.advances, before.advances) << "grace periods advance the epoch";
  EXPECT_GT(after.epoch, before.epoch);
  std::printf("epoch %llu, %llu advances, %llu failed, %llu threads\n",
              static_cast<unsigned long long>(after.epoch),
              static_cast<unsigned long long>(after.advances),
              static_cast<unsigned long long>(after.failed_advances),
              static_cast<unsigned long long>(after.threads));
}

}  // namespace
