// The background worker: one thread per process that purges memory past
// the purge delay, sweeps pages of exited threads, and runs the tasks of
// the layers above (the epoch collector's reclamation) on a timer, so that
// a process that stops allocating still gives memory back.
#pragma once
#include <atomic>
#include <cstdint>

namespace am {

// A periodic task: does what is due at `now` (ms) and returns when it next
// has work (kNeverMs: none). Runs on the worker, with no lock held.
using BackgroundTask = uint64_t (*)(uint64_t now);
void background_add_task(BackgroundTask task);

// 0: not started, 1: starting or running, 2: disabled or stopped.
extern std::atomic<uint8_t> g_bg_state;
void background_start();
// Called from slow paths (never with g_lock or a heap lock held: creating
// the thread allocates): starts the worker on first use, once the
// process's constructors have run.
inline void background_maybe_start() {
  if (__builtin_expect(g_bg_state.load(std::memory_order_relaxed) == 0, 0)) background_start();
}
// New work arrived while the worker may be in its long sleep or in a tick
// that missed it: wake it (at most once a tick). One load when it is
// asleep with something due soon.
void background_kick();
// Constructors have run: starting a thread is safe from now on.
void background_allow();
void background_stop();        // at exit: stop and join
void background_fork_child();  // the child has no worker; it restarts lazily
uint64_t background_ticks();   // for stats and tests
bool background_running();     // a worker thread runs (its tasks will run)

// The idle point's clock: while the worker runs, it sets this to the
// current time in units of kIdleTickMs (never 0), so that an idle point
// sees a tick by comparing two loads; 0 while no worker runs (idle points
// then count their calls instead).
constexpr uint64_t kIdleTickMs = 16;
extern std::atomic<uint64_t> g_idle_clock;

}  // namespace am
