// A small C++20 coroutine task type and a work-stealing pool, shared by the
// async workloads (am_wl_corofan, am_wl_server). Our own code, libstdc++ and
// pthread only: frames come from the global operator new, i.e. from whatever
// malloc is preloaded, which is the point.
//
// Task<T> is lazy: creating one allocates its frame and does nothing else.
// A parent starts children with `co_await join(pool, kids)`: the children
// go onto the current worker's deque (other workers steal them), the parent
// suspends, and the child that finishes last resumes the parent by symmetric
// transfer on its own thread. The parent then reads the results and destroys
// the children's frames there, so a frame is often created on one worker and
// freed on another. Every frame records the thread that allocated it; the
// pool counts frees that happen on a different thread (cross_frees()).
#pragma once
#include <atomic>
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace wl_async {

// The index of the pool worker this thread is (-1 outside a pool), and this
// thread's count of frames freed that another thread allocated.
inline thread_local int tl_worker = -1;
inline thread_local uint64_t tl_frames = 0;
inline thread_local uint64_t tl_cross_frees = 0;

// A small per-thread id (the address of a thread_local is unique per thread).
inline uintptr_t thread_key() {
  static thread_local char key;
  return reinterpret_cast<uintptr_t>(&key);
}

// Records which thread created the frame and counts the frees that happen on
// another thread. The promise is constructed right after operator new and
// destroyed right before operator delete, on the same threads as these.
struct FrameOwner {
  uintptr_t owner = thread_key();
  FrameOwner() { ++tl_frames; }
  FrameOwner(const FrameOwner&) = delete;
  FrameOwner& operator=(const FrameOwner&) = delete;
  ~FrameOwner() {
    if (owner != thread_key()) ++tl_cross_frees;
  }
};

// What a finished child tells its parent: one countdown per join.
struct JoinState {
  std::atomic<uint32_t> pending{0};
  std::coroutine_handle<> parent;
};

template <class T>
class Task {
 public:
  struct promise_type : FrameOwner {
    T value{};
    JoinState* join = nullptr;          // set by join() before the child runs
    std::atomic<bool>* done = nullptr;  // for a root task: set when it ends

    Task get_return_object() {
      return Task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct FinalAwaiter {
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
        promise_type& p = h.promise();
        if (p.join == nullptr) {
          // A root task: its owner waits for `done` and destroys it later.
          std::atomic<bool>* d = p.done;
          if (d != nullptr) {
            d->store(true, std::memory_order_release);
            d->notify_all();
          }
          return std::noop_coroutine();
        }
        JoinState* j = p.join;
        // After this decrement the parent may run (and destroy this frame)
        // on another thread: touch nothing of the frame any more.
        if (j->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) return j->parent;
        return std::noop_coroutine();
      }
      void await_resume() noexcept {}
    };
    FinalAwaiter final_suspend() noexcept { return {}; }
    void return_value(T v) { value = std::move(v); }
    void unhandled_exception() { std::terminate(); }
  };

  Task() = default;
  explicit Task(std::coroutine_handle<promise_type> h) : h_(h) {}
  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() { reset(); }

  void reset() {
    if (h_) h_.destroy();
    h_ = {};
  }
  std::coroutine_handle<promise_type> handle() const { return h_; }
  T& value() { return h_.promise().value; }

 private:
  std::coroutine_handle<promise_type> h_;
};

// A pool of worker threads, each with a deque of runnable coroutines behind
// a mutex. A worker pops its own deque at the back (LIFO: depth first, warm
// frames) and steals from the front of the others (FIFO: the oldest, i.e.
// the biggest pieces of work).
class Pool {
 public:
  explicit Pool(unsigned n) : workers_(n) {
    for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this, i] { loop(int(i)); });
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() { stop(); }

  unsigned size() const { return unsigned(workers_.size()); }

  // Queues h on the calling worker's deque (worker 0's from outside).
  void post(std::coroutine_handle<> h) {
    Worker& w = workers_[tl_worker >= 0 ? size_t(tl_worker) : 0];
    std::lock_guard<std::mutex> lk(w.m);
    w.q.push_back(h);
  }

  // Queues h on worker w's deque.
  void post_to(unsigned w, std::coroutine_handle<> h) {
    Worker& x = workers_[w % size()];
    std::lock_guard<std::mutex> lk(x.m);
    x.q.push_back(h);
  }

  // co_await pool.hop(): continues on the next worker (round robin from the
  // current one), like an I/O completion delivered to another thread.
  auto hop() {
    struct Awaiter {
      Pool& pool;
      bool await_ready() const noexcept { return pool.size() < 2; }
      void await_suspend(std::coroutine_handle<> h) { pool.post_to(unsigned(tl_worker + 1), h); }
      void await_resume() const noexcept {}
    };
    return Awaiter{*this};
  }

  // Stops and joins the workers; returns once all have exited. Sums the
  // per-thread frame counters of the workers.
  void stop() {
    if (threads_.empty()) return;
    stop_.store(true, std::memory_order_release);
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  uint64_t frames() const { return frames_.load(); }
  uint64_t cross_frees() const { return cross_frees_.load(); }
  uint64_t steals() const { return steals_.load(); }

 private:
  struct alignas(64) Worker {
    std::mutex m;
    std::deque<std::coroutine_handle<>> q;
  };

  std::coroutine_handle<> pop(int self) {
    Worker& w = workers_[size_t(self)];
    std::lock_guard<std::mutex> lk(w.m);
    if (w.q.empty()) return {};
    auto h = w.q.back();
    w.q.pop_back();
    return h;
  }

  std::coroutine_handle<> steal(int self, unsigned& victim) {
    const unsigned n = size();
    for (unsigned k = 1; k < n; ++k) {
      victim = (victim + 1) % n;
      if (int(victim) == self) continue;
      Worker& w = workers_[victim];
      std::unique_lock<std::mutex> lk(w.m, std::try_to_lock);
      if (!lk.owns_lock() || w.q.empty()) continue;
      auto h = w.q.front();
      w.q.pop_front();
      return h;
    }
    return {};
  }

  void loop(int self) {
    tl_worker = self;
    unsigned victim = unsigned(self);
    uint64_t my_steals = 0;
    unsigned idle = 0;
    while (true) {
      std::coroutine_handle<> h = pop(self);
      if (!h) {
        h = steal(self, victim);
        if (h) ++my_steals;
      }
      if (h) {
        idle = 0;
        h.resume();
        continue;
      }
      if (stop_.load(std::memory_order_acquire)) break;
      if (++idle > 64) std::this_thread::yield();
    }
    frames_ += tl_frames;
    cross_frees_ += tl_cross_frees;
    steals_ += my_steals;
  }

  std::vector<Worker> workers_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> frames_{0}, cross_frees_{0}, steals_{0};
};

// co_await join(pool, kids): runs every child (on this worker's deque, open
// to stealing) and resumes the awaiting coroutine when all have finished, on
// the thread of the child that finished last.
template <class T>
struct JoinAwaiter {
  Pool& pool;
  std::vector<Task<T>>& kids;
  JoinState state;

  bool await_ready() const noexcept { return kids.empty(); }
  bool await_suspend(std::coroutine_handle<> parent) noexcept {
    state.parent = parent;
    // One extra count for ourselves, so no child can resume the parent
    // before all are queued.
    state.pending.store(uint32_t(kids.size()) + 1, std::memory_order_relaxed);
    for (auto& k : kids) k.handle().promise().join = &state;
    for (auto& k : kids) pool.post(k.handle());
    // Last one out: every child already finished; continue without
    // suspending. Otherwise the last child resumes the parent.
    return state.pending.fetch_sub(1, std::memory_order_acq_rel) != 1;
  }
  void await_resume() const noexcept {}
};

template <class T>
JoinAwaiter<T> join(Pool& pool, std::vector<Task<T>>& kids) {
  return JoinAwaiter<T>{pool, kids, {}};
}

}  // namespace wl_async
