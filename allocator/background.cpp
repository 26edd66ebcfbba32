// The background worker: purge with decay and the sweep of abandoned pages
// (maintenance_tick), demand-predictive page building (predict_tick), and
// the tasks of the layers above. It is started lazily from a slow path (with no
// lock held) once constructors have run; pthread_create allocates the new
// thread's DTV with calloc, which re-enters amalloc as an ordinary call
// because the state is already "starting". All signals are blocked on it.
// It sleeps on a futex until the earliest due time its tasks report, at
// most kIdleWaitMs: an idle process sees one wake-up a second.
#include "allocator/background.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include "allocator/heap.h"
#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/predict.h"
#include "allocator/segment.h"

namespace am {

std::atomic<uint8_t> g_bg_state{0};
std::atomic<uint64_t> g_idle_clock{0};

namespace {

constexpr int kMaxTasks = 4;
constexpr uint32_t kIdleWaitMs = 1000;
constexpr size_t kStack = 256 * 1024;

std::atomic<BackgroundTask> g_tasks[kMaxTasks];
std::atomic<uint32_t> g_word;       // the futex: bumped to wake the worker
std::atomic<uint8_t> g_long_sleep;  // in a tick, or asleep with nothing due: kicks wake it
__thread bool t_worker __attribute__((tls_model("initial-exec")));
std::atomic<uint8_t> g_stop;
std::atomic<uint8_t> g_allowed;
std::atomic<uint8_t> g_running;  // a thread exists to join
std::atomic<uint64_t> g_ticks;
pthread_t g_thread;

uint64_t tick(uint64_t now) {
  uint64_t clock = now / kIdleTickMs + 1;
  if (g_idle_clock.load(std::memory_order_relaxed) != clock)
    g_idle_clock.store(clock, std::memory_order_relaxed);
  uint64_t next = maintenance_tick(now);
  if (uint64_t n = predict_tick(now); n < next) next = n;
  for (auto& t : g_tasks)
    if (BackgroundTask f = t.load(std::memory_order_acquire)) {
      uint64_t n = f(now);
      if (n < next) next = n;
    }
  g_ticks.fetch_add(1, std::memory_order_relaxed);
  return next;
}

void* worker(void*) {
  pthread_setname_np(pthread_self(), "amalloc-bg");
  t_worker = true;
  // SCHED_BATCH: the worker keeps its fair share of CPU, but its wake-ups
  // no longer preempt the thread running where it wakes. Under the default
  // policy each 2 ms tick of a burst preempted an application thread for a
  // page build: bursty's p99.9 with the predictor was 9 us, 3.5 us with it.
  // A real-time policy inherited from the creator is kept.
  int policy = SCHED_OTHER;
  sched_param param{};
  pthread_getschedparam(pthread_self(), &policy, &param);
  if (policy == SCHED_OTHER) {
    param.sched_priority = 0;
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
  }
  while (!g_stop.load(std::memory_order_acquire)) {
    // The flag is up before the tick: a kick during the tick (whose work
    // the tick may have missed) bumps the word read here, and the wait
    // below returns at once. One that came before this load, the tick
    // sees the work of.
    g_long_sleep.store(1, std::memory_order_seq_cst);
    uint32_t w = g_word.load(std::memory_order_seq_cst);
    uint64_t next = tick(os_now_ms());
    uint64_t now = os_now_ms();
    uint32_t wait = kIdleWaitMs;
    if (next != kNeverMs) {
      // Due soon anyway: kicks from here on need not wake it.
      g_long_sleep.store(0, std::memory_order_seq_cst);
      if (next <= now)
        wait = 1;
      else if (next - now < kIdleWaitMs)
        wait = static_cast<uint32_t>(next - now);
    }
    if (!g_stop.load(std::memory_order_acquire)) os_futex_wait(&g_word, w, wait);
    g_long_sleep.store(0, std::memory_order_relaxed);
  }
  return nullptr;
}

void wake() {
  g_word.fetch_add(1, std::memory_order_seq_cst);
  os_futex_wake(&g_word);
}

}  // namespace

void background_add_task(BackgroundTask task) {
  for (auto& t : g_tasks) {
    BackgroundTask expected = nullptr;
    if (t.compare_exchange_strong(expected, task, std::memory_order_acq_rel)) return;
  }
}

void background_start() {
  if (!g_allowed.load(std::memory_order_acquire)) return;  // too early: next slow path
  uint8_t expected = 0;
  if (!g_bg_state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) return;
  if (!g_options.background) {
    g_bg_state.store(2, std::memory_order_release);
    return;
  }
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, kStack);
  g_stop.store(0, std::memory_order_relaxed);
  int rc = pthread_create(&g_thread, &attr, worker, nullptr);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc == 0)
    g_running.store(1, std::memory_order_release);
  else
    g_bg_state.store(2, std::memory_order_release);  // the slow paths keep the work
}

void background_kick() {
  // The worker's own work (a sweep giving pages back) is in its due time.
  if (t_worker) return;
  // seq_cst: the kicker's store of its work, then this load, against the
  // worker's store of the flag, then its look at the work (a plain load on
  // x86, where the relaxed one was enough only because the work is
  // published by locked instructions).
  if (g_long_sleep.load(std::memory_order_seq_cst) &&
      g_long_sleep.exchange(0, std::memory_order_seq_cst))
    wake();
}

void background_allow() { g_allowed.store(1, std::memory_order_release); }

void background_stop() {
  if (!g_running.exchange(0, std::memory_order_acq_rel)) return;
  g_stop.store(1, std::memory_order_release);
  wake();
  if (!pthread_equal(pthread_self(), g_thread)) pthread_join(g_thread, nullptr);
  g_idle_clock.store(0, std::memory_order_relaxed);  // after the join: no tick() is left to set it
  g_bg_state.store(2, std::memory_order_release);
}

void background_fork_child() {
  g_idle_clock.store(0, std::memory_order_relaxed);
  g_running.store(0, std::memory_order_relaxed);
  g_long_sleep.store(0, std::memory_order_relaxed);
  g_stop.store(0, std::memory_order_relaxed);
  if (g_bg_state.load(std::memory_order_relaxed) == 1)
    g_bg_state.store(0, std::memory_order_relaxed);
}

uint64_t background_ticks() { return g_ticks.load(std::memory_order_relaxed); }

bool background_running() { return g_running.load(std::memory_order_relaxed); }

}  // namespace am
