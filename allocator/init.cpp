// Process start and end, fork, and the global lock.
#include <fcntl.h>
#include <pthread.h>

#include <atomic>

#include "allocator/background.h"
#include "allocator/filemap.h"
#include "allocator/format.h"
#include "allocator/heap.h"
#include "allocator/lock.h"
#include "allocator/options.h"
#include "allocator/stats.h"
#include "amalloc/amalloc.h"

namespace am {

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

namespace {

std::atomic<uint8_t> g_inited;

void fork_prepare() {
  heap_fork_prepare();  // every heap lock, then g_lock
  filemap_fork_prepare();
}
void fork_parent() {
  filemap_fork_parent();
  heap_fork_parent();
}
void fork_child() {
  // The child's thread is the one that took g_lock in prepare: it unlocks
  // it (a re-initialised mutex still counts as held for ThreadSanitizer,
  // which then sees lock orders that no thread takes).
  filemap_fork_child();
  pthread_mutex_unlock(&g_lock);
  heap_fork_child();
  background_fork_child();
}

void print_options() {
  Out o;
  o.str("amalloc ")
      .str(AMALLOC_VERSION_STRING)
      .str(": stats=")
      .num(g_options.stats)
      .str(" bad_free=")
      .str(g_options.bad_free == kBadFreeAbort ? "abort" : "report")
      .str(" purge=")
      .str(g_options.purge_free ? "free" : "dontneed")
      .str(" purge_delay=")
      .num(g_options.purge_delay_ms)
      .str("ms segment_cache=")
      .num(g_options.segment_cache)
      .str(" background=")
      .num(g_options.background)
      .str(" predict=")
      .num(g_options.predict)
      .str(" mesh=")
      .num(g_options.mesh)
      .str(" trim=")
      .num(g_options.trim)
      .str(" epoch_warn=")
      .num(g_options.epoch_warn_ms)
      .str("ms epoch_membarrier=")
      .num(g_options.epoch_membarrier)
      .ch('\n')
      .flush(2);
}

// Fork handlers registered as early as possible: a prepare handler runs
// after those registered later, and amalloc's must be the last to run
// (with AMALLOC_MESH it makes the heap read-only; see filemap.h).
// pthread_atfork allocates: never under g_lock.
void register_fork_handlers() {
  static std::atomic<uint8_t> done;
  if (done.load(std::memory_order_acquire) || done.exchange(1, std::memory_order_acq_rel)) return;
  pthread_atfork(fork_prepare, fork_parent, fork_child);
}

}  // namespace

// First allocation of the process, which may come before constructors (or
// from inside the dynamic loader): read what environment there is.
void global_init() {
  if (g_inited.load(std::memory_order_acquire)) return;
  {
    LockGuard g;
    if (g_inited.load(std::memory_order_relaxed) || !options_init()) return;
    g_inited.store(1, std::memory_order_release);
  }
  register_fork_handlers();
}

}  // namespace am

using namespace am;

__attribute__((constructor(101))) static void amalloc_start() {
  // Reads the options unless an earlier allocation already could.
  global_init();
  register_fork_handlers();  // if the environment was not there before
  if (g_options.stats != kStatsOff) {
    int fd = fcntl(2, F_DUPFD_CLOEXEC, 100);
    if (fd >= 0) g_report_fd = fd;
  }
  if (g_options.verbose) print_options();
  background_allow();
}

__attribute__((destructor(101))) static void amalloc_end() {
  background_stop();
  if (g_options.stats == kStatsText)
    stats_report(g_report_fd);
  else if (g_options.stats == kStatsJson)
    stats_report_json(g_report_fd);
}
