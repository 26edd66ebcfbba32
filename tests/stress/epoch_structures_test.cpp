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
#include <amalloc/amalloc.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <amalloc/amalloc.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"
#include "epoch_structures.h"

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
            std::thread([&, r, i] { reader(kWriters + r + unsigned(i), 900 + r * 1000003 + i, 2000); })
                .join();
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
    if (churn) std::printf(", %llu reader threads", static_cast<unsigned long long>(thread_starts.load()));
    std::printf("\n");
  }
  expect_no_failures();
  expect_all_reclaimed(c, before);
}

TEST(EpochStress, HashMapGuards) { map_test(Mode::guard, false); }
TEST(EpochStress, HashMapExecutors) { map_test(Mode::executor, false); }
TEST(EpochStress, HashMapMixed) { map_test(Mode::mixed, false); }
TEST(EpochStress, HashMapReaderThreadChurn) { map_test(Mode::mixed, true); }

}  // namespace
