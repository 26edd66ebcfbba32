// Shared by the frame benchmarks (frames.cpp, frames_asio.cpp): the counters
// they report and the ring of the cross-thread cases.
//
// BlockingRing is a bounded single-producer single-consumer ring. A side
// that finds it full (producer) or empty (consumer) spins for a while, then
// sleeps on a futex until the other side has made progress. The old handoff
// spun and yielded on both sides, so on 2 cores it fought anything else
// that ran for the CPU; here a side with nothing to do gets off it, and a
// side that is awake pays one load a push or pop to know whether it must
// wake the other (a syscall only when the other really sleeps). What spread
// remains between runs comes from the machine: see CoreToCore.
//
// Each side keeps its index and a cached copy of the other's on its own
// cache line, and reads the other's published index only when the cached
// copy says full or empty, so the lines that move between the cores are the
// slots and the frames themselves.
#pragma once
#include <benchmark/benchmark.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <utility>

namespace bench {

using Clock = std::chrono::steady_clock;

// What handler(x) returns (a byte of its buffer, filled with x & 0x7f, plus
// one): the cross-thread cases compare the consumer's sum with this.
inline long handler_result(int x) { return (x & 0x7f) + 1; }

// ns_per_frame: the figure docs/performance.md quotes (wall time over
// frames; the same as 1e9 / items_per_second, which scripts/compare reads).
inline void count_frames(benchmark::State& state, Clock::duration wall) {
  const double n = static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations());
  state.counters["ns_per_frame"] = std::chrono::duration<double, std::nano>(wall).count() / n;
}

// Sleeps while *word == seen (or until a wake; spurious returns are fine).
inline void futex_wait(std::atomic<uint32_t>* word, uint32_t seen) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr,
          0);
}
inline void futex_wake(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

// One side's sleep: an event count. The sleeper reads `seq`, says it is
// asleep, checks its condition once more and sleeps only if `seq` is still
// what it read; the waker bumps `seq` before the wake, so a wake between
// the check and the sleep is never lost.
struct alignas(64) Sleeper {
  std::atomic<uint32_t> asleep{0};
  std::atomic<uint32_t> seq{0};
  uint64_t sleeps = 0;  // how often this side slept (a benchmark counter)

  template <class Ready>
  void wait(Ready ready) {
    uint32_t s = seq.load(std::memory_order_acquire);
    asleep.store(1, std::memory_order_seq_cst);
    if (!ready()) {
      ++sleeps;
      futex_wait(&seq, s);
    }
    asleep.store(0, std::memory_order_relaxed);
  }
  // The other side, after publishing progress with a seq_cst store.
  void wake_if_asleep() {
    if (asleep.load(std::memory_order_seq_cst)) {
      seq.fetch_add(1, std::memory_order_release);
      futex_wake(&seq);
    }
  }
};

template <class T, uint32_t N = 256>
class BlockingRing {
  static_assert((N & (N - 1)) == 0, "N is a power of two");

 public:
  // idle: called when a side runs out of work, before it spins and sleeps
  // (an executor's idle point); may be null.
  explicit BlockingRing(void (*idle)() = nullptr) : idle_(idle) {}

  // Producer side.
  void push(T v) {
    if (p_.head - p_.tail_seen == N) {
      p_.tail_seen = tail_.load(std::memory_order_acquire);
      if (p_.head - p_.tail_seen == N) wait_for_space();
    }
    slots_[p_.head % N] = std::move(v);
    head_.store(++p_.head, std::memory_order_seq_cst);
    if (p_.head - p_.tail_seen >= kWakeBatch) c_sleep_.wake_if_asleep();
  }
  // No more pushes: the consumer's pop returns false once the ring is empty.
  void close() {
    closed_.store(true, std::memory_order_seq_cst);
    c_sleep_.wake_if_asleep();
  }

  // Consumer side: false when the ring is closed and empty.
  bool pop(T& out) {
    if (c_.tail == c_.head_seen) {
      c_.head_seen = head_.load(std::memory_order_acquire);
      if (c_.tail == c_.head_seen && !wait_for_items()) return false;
    }
    out = std::move(slots_[c_.tail % N]);
    tail_.store(++c_.tail, std::memory_order_seq_cst);
    if (N - (c_.head_seen - c_.tail) >= kWakeBatch) p_sleep_.wake_if_asleep();
    return true;
  }

  uint64_t producer_sleeps() const { return p_sleep_.sleeps; }
  uint64_t consumer_sleeps() const { return c_sleep_.sleeps; }

 private:
  static constexpr int kSpins = 2000;  // pauses: ~50 us on the project's machine
  // A sleeping side is woken once this many items (or free slots) wait for
  // it, not at the first: one wake-up, a syscall on the busy side, per
  // batch. The producer sleeps only on a full ring and the consumer only on
  // an empty one, both more than a batch away, so neither sleeps forever.
  static constexpr uint32_t kWakeBatch = 32;

  void wait_for_space() {
    if (idle_) idle_();
    auto space = [&] {
      p_.tail_seen = tail_.load(std::memory_order_seq_cst);
      return p_.head - p_.tail_seen < N;
    };
    for (int i = 0; i < kSpins; ++i) {
      if (space()) return;
      __builtin_ia32_pause();
    }
    while (!space()) p_sleep_.wait(space);
  }

  bool wait_for_items() {
    if (idle_) idle_();
    auto items = [&] {
      c_.head_seen = head_.load(std::memory_order_seq_cst);
      return c_.tail != c_.head_seen || closed_.load(std::memory_order_seq_cst);
    };
    for (int i = 0; i < kSpins && !items(); ++i) __builtin_ia32_pause();
    while (!items()) c_sleep_.wait(items);
    // Closed: the last pushes happened before the close, so head is final.
    c_.head_seen = head_.load(std::memory_order_acquire);
    return c_.tail != c_.head_seen;
  }

  struct alignas(64) Side {
    uint32_t head = 0, tail_seen = 0;  // producer: its index, the consumer's as last read
    uint32_t tail = 0, head_seen = 0;  // consumer: its index, the producer's as last read
  };
  Side p_, c_;
  alignas(64) std::atomic<uint32_t> head_{0};
  alignas(64) std::atomic<uint32_t> tail_{0};
  alignas(64) std::atomic<bool> closed_{false};
  Sleeper p_sleep_, c_sleep_;
  void (*idle_)();
  alignas(64) T slots_[N];
};

// The latency of moving a cache line from one core to the other, measured
// by the two threads of a cross-thread case before and after the timed part.
// On the project's machine (2 vCPUs of a virtual machine) it changes with
// where the host runs them, from ~30 to ~190 ns one way, and the frames
// that cross with it take several such moves each: the counter tells a slow
// run from a slow allocator.
struct CoreToCore {
  static constexpr uint32_t kRounds = 2000, kWarmup = 200;
  // Both threads spin: on a machine too busy to run them at once each round
  // waits for a time slice, so side 0 stops after this long.
  static constexpr auto kMaxTime = std::chrono::milliseconds(2);
  alignas(64) std::atomic<uint32_t> line{0};
  alignas(64) std::atomic<int> done{0};  // side 0 has finished generation done - 1
  double one_way_ns[2] = {0, 0};

  // Both threads call this at the same time, once with gen 0 and once with
  // gen 1; side 0 measures (the mean one-way time after the warm-up).
  void bounce(int side, int gen) {
    const uint32_t base = static_cast<uint32_t>(gen) * 2 * kRounds;
    if (side == 1) {
      for (uint32_t i = 0; i < kRounds; ++i) {
        while (line.load(std::memory_order_acquire) != base + 2 * i + 1)
          if (done.load(std::memory_order_acquire) > gen) return;
        line.store(base + 2 * i + 2, std::memory_order_release);
      }
      return;
    }
    const Clock::time_point begin = Clock::now();
    Clock::time_point start = begin;
    uint32_t i = 0;
    for (bool late = false; i < kRounds && !late; ++i) {
      if (i == kWarmup) start = Clock::now();
      line.store(base + 2 * i + 1, std::memory_order_release);
      for (uint32_t spins = 1; line.load(std::memory_order_acquire) != base + 2 * i + 2; ++spins) {
        if (spins % 1024 == 0 && Clock::now() - begin > kMaxTime) {
          late = true;
          break;
        }
      }
    }
    done.store(gen + 1, std::memory_order_release);
    const double rounds = i > kWarmup ? i - kWarmup : i;
    if (i <= kWarmup) start = begin;
    one_way_ns[gen] =
        std::chrono::duration<double, std::nano>(Clock::now() - start).count() / (2 * rounds);
  }
};

// The end of a cross-thread case: manual time from the first creation to the
// last destruction, the counters, and an error if the consumer's results do
// not add up (a frame lost or run twice).
template <class Ring>
void finish_cross(benchmark::State& state, Clock::duration wall, long sum, long expected,
                  const Ring& ring, const CoreToCore& c2c) {
  state.SetIterationTime(std::chrono::duration<double>(wall).count());
  count_frames(state, wall);
  // How often a side found nothing to do for a while and slept.
  state.counters["sleeps"] = static_cast<double>(ring.producer_sleeps() + ring.consumer_sleeps());
  state.counters["c2c_ns_before"] = c2c.one_way_ns[0];
  state.counters["c2c_ns_after"] = c2c.one_way_ns[1];
  if (sum != expected) state.SkipWithError("the consumer's results do not add up");
}

}  // namespace bench
