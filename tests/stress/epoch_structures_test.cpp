// Epoch-based reclamation under load: a Treiber stack, a Michael-Scott
// queue and a hash map (tests/common/epoch_structures.h) with concurrent
// readers and writers that retire removed nodes through amalloc, with the
// threads pinned by guards, registered as quiescent-state executors, or a
// mix of both. Every node read is checked (magic, checksum, poison written
// by the deleter), readers hold a node across a pause, and the totals of
// what went in and came out must match at the end. Then am_epoch_barrier
// must have reclaimed every retired node.
//
// Each test runs for about a second (AMALLOC_TEST_SCALE scales it; less
// under the sanitizers).
#include "epoch_structures.h"

#include <amalloc/amalloc.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <amalloc/amalloc.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"

namespace {

using epochs::Counters;
using epochs::Node;
using epochs::u64;

enum class Mode { guard, executor, mixed };

const char* mode_name(Mode m) {
  return m == Mode::guard ? "guard" : m == Mode::executor ? "executor" : "mixed";
}

double run_seconds() { return std::max(0.25, 1.0 * amt::scale()); }

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A worker thread's way of being pinned: a guard per operation, or a
// quiescent-state executor that passes its idle point every few
// operations (and now and then goes offline for a short sleep).
class Pinning {
 public:
  Pinning(Mode mode, unsigned index, u64 seed) : rng_(seed) {
    executor_ = mode == Mode::executor || (mode == Mode::mixed && index % 2 == 1);
    if (executor_) ex_.emplace();
  }
  bool executor() const { return executor_; }

  // Runs one operation pinned.
  template <class F>
  void op(F&& f) {
    if (!executor_) {
      amalloc::epoch::guard g;
      f();
      return;
    }
    if (rng_.chance(3)) {
      amalloc::epoch::guard nested;  // nests inside the executor's permanent pin
      f();
    } else {
      f();
    }
    if (++ops_ % 8 == 0) am_executor_idle();
    if (ops_ % 1024 == 0) {
      am_epoch_offline();
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      am_epoch_online();
    }
  }

 private:
  amt::Rng rng_;
  bool executor_ = false;
  u64 ops_ = 0;
  std::optional<amalloc::epoch::executor> ex_;
};

// Aborts with a message when a test's threads have not finished long after
// their deadline: a deadlock is reported, not left to ctest's timeout.
class Watchdog {
 public:
  explicit Watchdog(const char* test)
      : t_([this, test] {
          auto limit = Clock::now() + std::chrono::duration<double>(run_seconds()) + 60s;
          while (!done_.load()) {
            if (Clock::now() > limit) {
              am_epoch_stats_t s{};
              am_epoch_stats(&s);
              std::fprintf(stderr,
                           "epoch stress %s: threads still running 60 s after their deadline: "
                           "deadlock (epoch %llu, %llu pending, %llu failed advances)\n",
                           test, static_cast<unsigned long long>(s.epoch),
                           static_cast<unsigned long long>(s.pending),
                           static_cast<unsigned long long>(s.failed_advances));
              std::fflush(stderr);
              std::abort();
            }
            std::this_thread::sleep_for(10ms);
          }
        }) {}
  ~Watchdog() {
    done_.store(true);
    t_.join();
  }

 private:
  std::atomic<bool> done_{false};
  std::thread t_;
};

struct Totals {
  u64 count = 0, sum = 0, mixsum = 0;
  void add(u64 key) {
    ++count;
    sum += key;
    mixsum += amt::mix64(key);
  }
  void add(const Totals& o) {
    count += o.count;
    sum += o.sum;
    mixsum += o.mixsum;
  }
};

am_epoch_stats_t epoch_stats() {
  am_epoch_stats_t s{};
  am_epoch_stats(&s);
  return s;
}

// After the structure's threads are gone: one barrier reclaims every node
// they retired, deleters included, and the collector's counts agree.
void expect_all_reclaimed(const Counters& c, const am_epoch_stats_t& before) {
  amalloc::epoch::barrier();
  am_epoch_stats_t after = epoch_stats();
  EXPECT_EQ(c.reclaimed.load(), c.retired.load()) << "deleters run after am_epoch_barrier";
  u64 retired = after.retired - before.retired;
  u64 reclaimed = after.reclaimed - before.reclaimed;
  EXPECT_EQ(retired, c.retired.load() + c.plain.load()) << "am_epoch_stats retired count";
  EXPECT_EQ(reclaimed, retired) << "am_epoch_stats: reclaimed after am_epoch_barrier";
  EXPECT_EQ(after.pending, before.pending);
  EXPECT_EQ(after.pending, after.retired - after.reclaimed);
  EXPECT_EQ(after.pending, 0u) << "nothing pending after am_epoch_barrier";
  EXPECT_EQ(after.pending_bytes, 0u);
}

// At the start of each test (the failure record is global).
am_epoch_stats_t start() {
  epochs::failures().reset();
  return epoch_stats();
}

void expect_no_failures() {
  EXPECT_EQ(epochs::failures().count.load(), 0u) << epochs::failures().describe();
}

// ---- Treiber stack -----------------------------------------------------------------

void stack_test(Mode mode) {
  const unsigned kWorkers = 4, kReaders = 2;
  const auto deadline = Clock::now() + std::chrono::duration<double>(run_seconds());
  am_epoch_stats_t before = start();
  Counters c;
  epochs::Stack stack;
  Totals prefill;
  amt::Rng rng0(1);
  for (u64 i = 0; i < 1000; ++i) {
    u64 key = (u64{99} << 40) | i;
    stack.push(epochs::make_node(key, ~key, rng0));
    prefill.add(key);
  }
  std::vector<Totals> pushed(kWorkers), popped(kWorkers);
  std::atomic<u64> scans{0};
  std::vector<std::thread> th;
  Watchdog dog("stack");
  for (unsigned t = 0; t < kWorkers; ++t)
    th.emplace_back([&, t] {
      Pinning pin(mode, t, 100 + t);
      amt::Rng rng(200 + t);
      u64 seq = 0;
      while (Clock::now() < deadline) {
        for (int k = 0; k < 64; ++k) {
          if (rng.chance(50)) {
            u64 key = (u64{t} << 40) | seq++;
            Node* n = epochs::make_node(key, ~key, rng);
            stack.push(n);
            pushed[t].add(key);
          } else {
            pin.op([&] {
              Node* n = stack.pop();
              if (n == nullptr) return;
              if (epochs::verify(n, "popped node") && n->value == ~n->key) popped[t].add(n->key);
              epochs::retire(n, c);
            });
          }
        }
        std::this_thread::yield();
      }
    });
  for (unsigned r = 0; r < kReaders; ++r)
    th.emplace_back([&, r] {
      Pinning pin(mode, kWorkers + r, 300 + r);
      u64 i = 0;
      while (Clock::now() < deadline) {
        pin.op([&] { stack.scan(64, ++i % 4 == 0); });
        scans.fetch_add(1, std::memory_order_relaxed);
      }
    });
  for (auto& x : th) x.join();

  Totals in = prefill, out;
  for (unsigned t = 0; t < kWorkers; ++t) {
    in.add(pushed[t]);
    out.add(popped[t]);
  }
  u64 left = 0;
  {
    amalloc::epoch::guard g;
    while (Node* n = stack.pop()) {
      if (epochs::verify(n, "drained node")) out.add(n->key);
      ++left;
      epochs::retire(n, c);
    }
  }
  EXPECT_EQ(in.count, out.count) << "pushed vs popped";
  EXPECT_EQ(in.sum, out.sum);
  EXPECT_EQ(in.mixsum, out.mixsum);
  expect_no_failures();
  expect_all_reclaimed(c, before);
  std::printf("stack (%s): %llu pushes, %llu pops, %llu left, %llu scans\n", mode_name(mode),
              static_cast<unsigned long long>(in.count - prefill.count),
              static_cast<unsigned long long>(out.count - left),
              static_cast<unsigned long long>(left), static_cast<unsigned long long>(scans.load()));
}

TEST(EpochStress, TreiberStackGuards) { stack_test(Mode::guard); }
TEST(EpochStress, TreiberStackExecutors) { stack_test(Mode::executor); }
TEST(EpochStress, TreiberStackMixed) { stack_test(Mode::mixed); }

// ---- Michael-Scott queue -------------------------------------------------------------

void queue_test(Mode mode) {
  const unsigned kThreads = 5;
  const auto deadline = Clock::now() + std::chrono::duration<double>(run_seconds());
  am_epoch_stats_t before = start();
  Counters c;
  Totals in, out;
  {
    amt::Rng rng0(2);
    epochs::Queue queue(rng0);
    std::vector<Totals> enq(kThreads), deq(kThreads);
    std::atomic<u64> fifo_violations{0};
    std::vector<std::thread> th;
    Watchdog dog("queue");
    for (unsigned t = 0; t < kThreads; ++t)
      th.emplace_back([&, t] {
        Pinning pin(mode, t, 400 + t);
        amt::Rng rng(500 + t);
        std::vector<u64> last(kThreads, 0);  // next expected minimum seq per producer
        u64 seq = 1;
        // Thread 0 mostly produces, thread 1 mostly consumes; others both.
        unsigned produce = t == 0 ? 80 : t == 1 ? 20 : 50;
        while (Clock::now() < deadline) {
          for (int k = 0; k < 64; ++k) {
            if (rng.chance(produce)) {
              u64 key = (u64{t} << 40) | seq++;
              Node* n = epochs::make_node(key, ~key, rng);
              pin.op([&] { queue.enqueue(n); });
              enq[t].add(key);
            } else {
              pin.op([&] {
                u64 key = 0, value = 0;
                Node* old = queue.dequeue(&key, &value, rng.chance(10));
                if (old == nullptr) return;
                epochs::retire(old, c);
                if (value != ~key) {
                  epochs::failures().add("dequeued a value that does not match its key");
                  return;
                }
                deq[t].add(key);
                u64 producer = key >> 40, s = key & ((u64{1} << 40) - 1);
                if (producer < kThreads) {
                  if (s <= last[producer]) fifo_violations.fetch_add(1);
                  last[producer] = s;
                }
              });
            }
          }
        }
      });
    for (auto& x : th) x.join();
    EXPECT_EQ(fifo_violations.load(), 0u) << "a consumer saw a producer's items out of order";
    for (unsigned t = 0; t < kThreads; ++t) {
      in.add(enq[t]);
      out.add(deq[t]);
    }
    u64 left = 0;
    {
      amalloc::epoch::guard g;
      u64 key = 0, value = 0;
      while (Node* old = queue.dequeue(&key, &value, false)) {
        epochs::retire(old, c);
        out.add(key);
        ++left;
      }
    }
    std::printf("queue (%s): %llu enqueued, %llu dequeued at the end\n", mode_name(mode),
                static_cast<unsigned long long>(in.count), static_cast<unsigned long long>(left));
  }  // ~Queue frees the last dummy
  EXPECT_EQ(in.count, out.count) << "enqueued vs dequeued";
  EXPECT_EQ(in.sum, out.sum);
  EXPECT_EQ(in.mixsum, out.mixsum);
  expect_no_failures();
  expect_all_reclaimed(c, before);
}

TEST(EpochStress, MichaelScottQueueGuards) { queue_test(Mode::guard); }
TEST(EpochStress, MichaelScottQueueExecutors) { queue_test(Mode::executor); }
TEST(EpochStress, MichaelScottQueueMixed) { queue_test(Mode::mixed); }

// ---- hash map ---------------------------------------------------------------------

// Writers own disjoint keys (key % kWriters) and keep a shadow copy of
// their keys' values; readers look up random keys. A value is
// (key << 32 | version), so a reader can tell a value that belongs to
// another key. At the end the map must hold exactly the shadows. Writers
// retire the nodes they unlink while holding the bucket lock, as real
// code does; in the mixed modes the other writer may be an executor
// waiting for that lock.
void map_test(Mode mode, bool churn) {
  const unsigned kWriters = 2, kReaders = churn ? 2 : 3;
  const u64 kKeys = 4096;
  const auto deadline = Clock::now() + std::chrono::duration<double>(run_seconds());
  am_epoch_stats_t before = start();
  Counters c;
  {
    epochs::Map map(256);
    std::vector<std::vector<u64>> shadow(kWriters, std::vector<u64>(kKeys, 0));
    std::atomic<u64> reads{0}, hits{0}, writes{0}, thread_starts{0};
    auto reader = [&](unsigned index, u64 seed, u64 max_ops) {
      Pinning pin(mode, index, seed);
      amt::Rng rng(seed);
      u64 n = 0, h = 0;
      while (n < max_ops && Clock::now() < deadline) {
        for (int k = 0; k < 64; ++k, ++n)
          pin.op([&] {
            u64 key = rng.below(kKeys), value = 0;
            if (map.find(key, &value, rng.chance(5))) {
              ++h;
              if ((value >> 32) != key)
                epochs::failures().add("map find: the value of another key");
            }
          });
      }
      reads.fetch_add(n);
      hits.fetch_add(h);
    };
    std::vector<std::thread> th;
    Watchdog dog("map");
    for (unsigned w = 0; w < kWriters; ++w)
      th.emplace_back([&, w] {
        Pinning pin(mode, w, 600 + w);
        amt::Rng rng(700 + w);
        u64 version = 0, n = 0;
        while (Clock::now() < deadline) {
          for (int k = 0; k < 64; ++k, ++n) {
            u64 key = rng.below(kKeys / kWriters) * kWriters + w;
            // Writers take no pin to change the map (the bucket lock is
            // enough), but read it pinned now and then.
            if (rng.chance(60)) {
              u64 value = (key << 32) | (++version & 0xFFFFFFFF);
              map.put(key, value, rng, c);
              shadow[w][key] = value;
            } else {
              bool was = map.erase(key, c);
              if (was != (shadow[w][key] != 0))
                epochs::failures().add("map erase: presence differs from the writer's shadow");
              shadow[w][key] = 0;
            }
            if (rng.chance(10))
              pin.op([&] {
                u64 v = 0;
                bool found = map.find(key, &v, false);
                if (found != (shadow[w][key] != 0) || (found && v != shadow[w][key]))
                  epochs::failures().add("map find: own key differs from the writer's shadow");
              });
          }
          std::this_thread::yield();  // readers pause while pinned: let them run
        }
        writes.fetch_add(n);
      });
    if (!churn) {
      for (unsigned r = 0; r < kReaders; ++r)
        th.emplace_back([&, r] { reader(kWriters + r, 800 + r, ~u64{0}); });
    } else {
      // Short-lived readers: threads keep registering and exiting (with
      // their pins and, for executors, their registration) while writers
      // retire.
      for (unsigned r = 0; r < kReaders; ++r)
        th.emplace_back([&, r] {
          u64 i = 0;
          while (Clock::now() < deadline) {
            std::thread([&, r, i] {
              reader(kWriters + r + unsigned(i), 900 + r * 1000003 + i, 2000);
            }).join();
            ++i;
            thread_starts.fetch_add(1);
          }
        });
    }
    for (auto& x : th) x.join();

    std::map<u64, u64> expected, got;
    for (unsigned w = 0; w < kWriters; ++w)
      for (u64 k = 0; k < kKeys; ++k)
        if (shadow[w][k] != 0) expected[k] = shadow[w][k];
    map.for_each_quiescent([&](u64 k, u64 v) {
      if (!got.emplace(k, v).second) epochs::failures().add("map: a key twice");
    });
    EXPECT_EQ(expected.size(), got.size());
    EXPECT_TRUE(expected == got) << "the map differs from the writers' shadows";
    std::printf("map (%s%s): %llu writes, %llu reads (%llu hits), %zu keys at the end",
                mode_name(mode), churn ? ", reader threads churn" : "",
                static_cast<unsigned long long>(writes.load()),
                static_cast<unsigned long long>(reads.load()),
                static_cast<unsigned long long>(hits.load()), got.size());
    if (churn)
      std::printf(", %llu reader threads", static_cast<unsigned long long>(thread_starts.load()));
    std::printf("\n");
  }
  expect_no_failures();
  expect_all_reclaimed(c, before);
}

TEST(EpochStress, HashMapGuards) { map_test(Mode::guard, false); }
TEST(EpochStress, HashMapExecutors) { map_test(Mode::executor, false); }
TEST(EpochStress, HashMapMixed) { map_test(Mode::mixed, false); }
TEST(EpochStress, HashMapReaderThreadChurn) { map_test(Mode::mixed, true); }

// ---- barrier and fork while other threads retire -------------------------------------

// Each retirer retires a few nodes at a time and publishes how many it has
// retired, then often sleeps: its open batch goes stale and is sealed by
// someone else (the background worker, another retirer whose batch filled),
// or fills and is sealed by the retirer itself. Barrier threads read the
// published counts, call am_epoch_barrier, and check that every retirement
// counted before the call has been reclaimed ("every retirement made before
// the call, by any thread"), also when the call comes while a batch is
// being sealed.
struct PerThread {
  alignas(64) std::atomic<u64> retired{0};
  alignas(64) std::atomic<u64> reclaimed{0};
};

void count_reclaimed(void*, void* ctx) {
  static_cast<PerThread*>(ctx)->reclaimed.fetch_add(1, std::memory_order_relaxed);
}

TEST(EpochStress, BarrierCoversRetirementsOfOtherThreads) {
  const unsigned kRetirers = 8, kBarriers = 2;
  const auto deadline = Clock::now() + std::chrono::duration<double>(run_seconds());
  std::vector<PerThread> pt(kRetirers);
  std::atomic<u64> violations{0}, barriers{0};
  std::atomic<bool> stop{false};
  Watchdog dog("barrier");
  std::vector<std::thread> th;
  for (unsigned t = 0; t < kRetirers; ++t)
    th.emplace_back([&, t] {
      amt::Rng rng(1000 + t);
      while (!stop.load(std::memory_order_relaxed)) {
        unsigned n = static_cast<unsigned>(rng.range(1, 3));
        for (unsigned i = 0; i < n; ++i) am_retire_fn(am_malloc(48), count_reclaimed, &pt[t]);
        pt[t].retired.fetch_add(n, std::memory_order_release);
        if (rng.chance(50))
          std::this_thread::sleep_for(std::chrono::microseconds(rng.range(0, 12000)));
      }
    });
  for (unsigned b = 0; b < kBarriers; ++b)
    th.emplace_back([&] {
      std::vector<u64> before(kRetirers);
      while (Clock::now() < deadline) {
        for (unsigned t = 0; t < kRetirers; ++t)
          before[t] = pt[t].retired.load(std::memory_order_acquire);
        am_epoch_barrier();
        barriers.fetch_add(1);
        for (unsigned t = 0; t < kRetirers; ++t) {
          u64 done = pt[t].reclaimed.load(std::memory_order_relaxed);
          if (done < before[t] && violations.fetch_add(1) < 5)
            std::fprintf(
                stderr,
                "am_epoch_barrier returned with %llu of the %llu retirements thread %u made "
                "before the call not reclaimed\n",
                static_cast<unsigned long long>(before[t] - done),
                static_cast<unsigned long long>(before[t]), t);
        }
      }
    });
  for (unsigned i = kRetirers; i < th.size(); ++i) th[i].join();
  stop.store(true);
  for (unsigned i = 0; i < kRetirers; ++i) th[i].join();
  am_epoch_barrier();
  u64 retired = 0;
  for (auto& x : pt) {
    EXPECT_EQ(x.reclaimed.load(), x.retired.load());
    retired += x.retired.load();
  }
  EXPECT_EQ(violations.load(), 0u)
      << "am_epoch_barrier missed retirements that other threads made before the call";
  std::printf("%llu barriers, %llu retirements\n", static_cast<unsigned long long>(barriers.load()),
              static_cast<unsigned long long>(retired));
}

// fork() while threads retire: every child reclaims what it inherited with
// am_epoch_barrier, and no deleter may run twice or on a block that was not
// retired (a half-written retirement entry taken over by the child).
constexpr u64 kRetiredMark = 0x2E712ED0002E712EULL, kDeadMark = 0xDEADDEADDEADDEADULL;
std::atomic<u64> g_bad_deleter_runs{0};

void check_once(void* p, void*) {
  u64* w = static_cast<u64*>(p);
  u64 m = std::atomic_ref<u64>(*w).load(std::memory_order_relaxed);
  if (m != kRetiredMark) g_bad_deleter_runs.fetch_add(1, std::memory_order_relaxed);
  std::atomic_ref<u64>(*w).store(kDeadMark, std::memory_order_relaxed);
}

TEST(EpochStress, ForkWhileThreadsRetire) {
  g_bad_deleter_runs.store(0);
  const int forks = static_cast<int>(amt::scaled(1500, 100));
  std::atomic<bool> stop{false};
  std::atomic<u64> retired{0};
  std::vector<std::thread> th;
  for (unsigned t = 0; t < 2; ++t)
    th.emplace_back([&] {
      u64 n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        auto* p = static_cast<u64*>(am_malloc(32));
        p[0] = kRetiredMark;
        am_retire_fn(p, check_once, nullptr);
        if (++n % 1024 == 0) retired.fetch_add(1024, std::memory_order_relaxed);
      }
    });
  int failures = 0;
  for (int i = 0; i < forks && failures < 3; ++i) {
    std::fflush(stdout);
    std::fflush(stderr);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      am_epoch_barrier();
      am_retire_fn(
          am_malloc(32), [](void* p, void*) { static_cast<u64*>(p)[0] = 1; }, nullptr);
      am_epoch_barrier();
      am_epoch_stats_t s{};
      am_epoch_stats(&s);
      u64 bad = g_bad_deleter_runs.load();
      if (bad != 0) {
        std::fprintf(stderr,
                     "fork child: %llu deleter call(s) on a block that was not (or no longer) "
                     "retired: a retirement entry half-written at fork was run\n",
                     static_cast<unsigned long long>(bad));
        _exit(3);
      }
      if (s.pending != 0) {
        std::fprintf(stderr, "fork child: %llu retirements pending after am_epoch_barrier\n",
                     static_cast<unsigned long long>(s.pending));
        _exit(4);
      }
      _exit(0);
    }
    int status = 0;
    auto limit = Clock::now() + 60s;
    pid_t w = 0;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && Clock::now() < limit)
      std::this_thread::sleep_for(200us);
    if (w == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << "fork child " << i << " hung and was killed";
      ++failures;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ++failures;
      if (WIFSIGNALED(status))
        ADD_FAILURE() << "fork child " << i << " killed by signal " << WTERMSIG(status)
                      << " (a bad free of a block a deleter had already freed?)";
      else
        ADD_FAILURE() << "fork child " << i << " exited with code " << WEXITSTATUS(status);
    }
  }
  stop.store(true);
  for (auto& t : th) t.join();
  am_epoch_barrier();
  EXPECT_EQ(g_bad_deleter_runs.load(), 0u) << "in the parent";
  std::printf("%d forks while 2 threads retired about %llu blocks\n", forks,
              static_cast<unsigned long long>(retired.load()));
}

// ---- liveness while other threads keep retiring -------------------------------------

// am_epoch_barrier waits for the retirements made before it, not for those
// made after: it must return even when other threads retire faster than
// one thread can run the deleters (slow deleters, several producers). A
// thread's exit must not be held up by them either. The producers stop
// after kLimit whatever happens, so a failure is reported, not a hang.
void slow_deleter(void* p, void* ctx) {
  auto until = Clock::now() + std::chrono::microseconds(20);
  while (Clock::now() < until) {
  }
  static_cast<std::atomic<u64>*>(ctx)->fetch_add(1, std::memory_order_relaxed);
  (void)p;
}

template <class F>
double seconds_while_others_retire(F f, u64* produced) {
  constexpr auto kLimit = 10s;
  std::atomic<bool> stop{false};
  std::atomic<u64> reclaimed{0}, retired{0};
  std::vector<std::thread> producers;
  for (int t = 0; t < 4; ++t)
    producers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        am_retire_fn(am_malloc(32), slow_deleter, &reclaimed);
        retired.fetch_add(1, std::memory_order_relaxed);
      }
    });
  std::this_thread::sleep_for(100ms);  // a backlog builds up
  std::atomic<bool> done{false};
  auto t0 = Clock::now();
  std::thread th([&] {
    f();
    done.store(true);
  });
  while (!done.load() && Clock::now() - t0 < kLimit) std::this_thread::sleep_for(1ms);
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  stop.store(true);
  for (auto& p : producers) p.join();
  th.join();
  am_epoch_barrier();
  *produced = retired.load();
  EXPECT_EQ(reclaimed.load(), retired.load());
  return done.load() || secs < 9.9 ? secs : 1e9;
}

TEST(EpochStress, BarrierReturnsWhileOthersKeepRetiring) {
  u64 n = 0;
  double secs = seconds_while_others_retire([] { am_epoch_barrier(); }, &n);
  EXPECT_LT(secs, 10.0) << "am_epoch_barrier did not return within 10 s while 4 threads kept "
                           "retiring (it ran their newer retirements' deleters as well?)";
  std::printf("barrier took %.3f s while 4 threads retired %llu blocks\n", secs < 1e8 ? secs : -1.0,
              static_cast<unsigned long long>(n));
}

TEST(EpochStress, ThreadExitWhileOthersKeepRetiring) {
  u64 n = 0;
  double secs = seconds_while_others_retire(
      [] {
        // A thread that retired a little and exits: its exit must end.
        std::thread([] {
          for (int i = 0; i < 200; ++i) am_retire(am_malloc(64));
        }).join();
      },
      &n);
  EXPECT_LT(secs, 10.0) << "a thread's exit took over 10 s while 4 threads kept retiring (its exit "
                           "ran their deleters as long as there were any?)";
  std::printf("thread exit took %.3f s while 4 threads retired %llu blocks\n",
              secs < 1e8 ? secs : -1.0, static_cast<unsigned long long>(n));
}

}  // namespace
