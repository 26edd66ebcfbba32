// Epoch-based deferred reclamation, the collector: registration, retirement
// batches, reclamation, the idle point's part, and the thread-exit and fork
// hooks. Advances are in epoch_advance.cpp, the public API in
// epoch_api.cpp.
//
// Invariants:
// - g_epoch only grows. A batch sealed at epoch t holds retirements made at
//   epochs <= t; it is reclaimed once g_epoch >= t + 2, because advancing
//   from e to e + 1 needs every pinned record to show e, so after two
//   advances every pin older than the seal has ended.
// - Sealed batches form one list in seal order (tags never decrease), and one
//   thread at a time reclaims a prefix of it, so g_done_seq says exactly
//   which seals have run their deleters (what barriers wait on).
// - Deleters run with no lock held; they may allocate, free and retire.
#include "pools/epoch.h"

#include <pthread.h>

#include <cstring>

#include "allocator/alloc_inline.h"
#include "allocator/api.h"
#include "allocator/background.h"
#include "allocator/format.h"
#include "allocator/os.h"
#include "allocator/segment.h"
#include "allocator/stats.h"
#include "amalloc/amalloc.h"

namespace am::epoch {

std::atomic<uint64_t> g_sealed_batches;
std::atomic<Record*> g_records;
__thread Record* t_rec;

__thread uint8_t t_exec;
__thread uint8_t t_offline;
__thread uint8_t t_reclaiming;

namespace {

// Above this many sealed, unreclaimed batches a retiring thread that is not
// pinned helps grace periods along for up to kMaxWaitMs (back-pressure).
constexpr uint64_t kMaxSealed = 64;
constexpr uint64_t kMaxWaitMs = 2;
// The idle point seals its thread's open batch once it is this old.
constexpr uint64_t kSealAfterMs = 1;

pthread_once_t g_once = PTHREAD_ONCE_INIT;
pthread_key_t g_key;
// The registry (in_use flags, new records) and the sealed list.
pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
constexpr uint32_t kStaticRecords = 32;
Record g_static_records[kStaticRecords];
uint32_t g_static_used;
Batch* g_sealed_head;
Batch* g_sealed_tail;
uint64_t g_seal_seq;
std::atomic<uint64_t> g_done_seq;
std::atomic<uint8_t> g_reclaiming;  // one reclaimer at a time
bool g_fork_took_reclaim;
Record* g_fork_locked;  // the records fork_prepare locked
// The epoch at which the oldest sealed batch may run (written under g_mu):
// a look before taking the lock.
std::atomic<uint64_t> g_reclaim_at{~uint64_t{0}};
std::atomic<uint64_t> g_head_sealed_ms;  // when it was sealed

// Counters (sealed batches only; stats add the open ones).
std::atomic<uint64_t> g_retired, g_reclaimed, g_sealed_bytes;

struct MuGuard {
  MuGuard() { pthread_mutex_lock(&g_mu); }
  ~MuGuard() { pthread_mutex_unlock(&g_mu); }
};

void lock_open(Record* r) {
  while (r->open_lock.exchange(1, std::memory_order_acquire)) os_yield();
}
void unlock_open(Record* r) { r->open_lock.store(0, std::memory_order_release); }

void append_sealed(Batch* b) {  // under g_mu
  b->tag = epoch_now().load(std::memory_order_seq_cst);
  b->sealed_ms = os_now_ms();
  b->seq = ++g_seal_seq;
  b->next = nullptr;
  if (g_sealed_tail) {
    g_sealed_tail->next = b;
  } else {
    g_sealed_head = b;
    g_reclaim_at.store(b->tag + 2, std::memory_order_relaxed);
    g_head_sealed_ms.store(b->sealed_ms, std::memory_order_relaxed);
  }
  g_sealed_tail = b;
  g_sealed_batches.fetch_add(1, std::memory_order_relaxed);
  stats_add(g_retired, b->n);
  stats_add(g_sealed_bytes, b->bytes);
}

// Called with the record's open lock held, so that a barrier never finds a
// batch that has left its record but is not on the sealed list yet.
void seal(Batch* b) {
  // The retirements' unlinks are visible before the tag is read.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  {
    MuGuard g;
    append_sealed(b);
  }
  background_kick();
}

// Moves a record's open batch to the sealed list (another thread's too).
void seal_open(Record* r) {
  lock_open(r);
  Batch* b = r->open;
  r->open = nullptr;
  if (b) seal(b);
  unlock_open(r);
}

// Seals other threads' open batches that have waited this long, so that a
// thread that retired a few nodes and then went quiet is not left behind.
constexpr uint64_t kStaleOpenMs = 10;

// Returns when the oldest open batch left will be stale (kNeverMs: none).
uint64_t seal_stale_open() {
  uint64_t now = os_now_ms();
  uint64_t next = kNeverMs;
  for (Record* r = g_records.load(std::memory_order_acquire); r; r = r->next) {
    if (r->open_lock.exchange(1, std::memory_order_acquire)) {  // busy: soon again
      next = now + 1;
      continue;
    }
    Batch* b = r->open;
    if (b && now - b->opened_ms >= kStaleOpenMs) {
      r->open = nullptr;
    } else {
      if (b && b->opened_ms + kStaleOpenMs < next) next = b->opened_ms + kStaleOpenMs;
      b = nullptr;
    }
    if (b) seal(b);
    unlock_open(r);
  }
  return next;
}

void run_batch(Batch* b) {
  for (uint32_t i = 0; i < b->n; i++) {
    const Entry& x = b->e[i];
    if (x.fn) x.fn(x.p, x.ctx);
    if (x.free_after) {
#ifdef AMALLOC_POISON
      // Test builds: a reader that still holds the block sees the pattern.
      memset(x.p, kReclaimedByte, am_usable_size(x.p));
#endif
      am_free(x.p);
    }
  }
}

// Whether the oldest sealed batch's grace period is over (its deleters are
// what is late, not the readers).
bool reclaim_due() {
  return g_reclaim_at.load(std::memory_order_relaxed) <=
         epoch_now().load(std::memory_order_acquire);
}

// Runs sealed batches whose grace period is over, at most `max` of them;
// returns at once if another thread is doing it (or this one, from inside a
// deleter). A pinned thread passes max = 1: while it runs deleters its pin
// holds the epoch, so it reclaims what it retires and no more.
void reclaim(uint64_t max = ~uint64_t{0}) {
  if (t_reclaiming || g_reclaiming.exchange(1, std::memory_order_acquire)) return;
  t_reclaiming = 1;
  // Only what was sealed before this call: threads that keep retiring must
  // not keep one reclaimer (a barrier, a thread exit) busy for ever.
  uint64_t last;
  {
    MuGuard g;
    last = g_seal_seq;
  }
  while (max > 0) {
    Batch* chain = nullptr;
    {
      MuGuard g;
      uint64_t e = epoch_now().load(std::memory_order_acquire);
      Batch** tail = &chain;
      for (uint64_t k = max;
           k > 0 && g_sealed_head && g_sealed_head->tag + 2 <= e && g_sealed_head->seq <= last;
           k--) {
        *tail = g_sealed_head;
        tail = &g_sealed_head->next;
        g_sealed_head = g_sealed_head->next;
      }
      *tail = nullptr;
      if (!g_sealed_head) g_sealed_tail = nullptr;
      g_reclaim_at.store(g_sealed_head ? g_sealed_head->tag + 2 : ~uint64_t{0},
                         std::memory_order_relaxed);
      if (g_sealed_head)
        g_head_sealed_ms.store(g_sealed_head->sealed_ms, std::memory_order_relaxed);
    }
    if (!chain) break;
    while (Batch* b = chain) {
      chain = b->next;
      run_batch(b);
      stats_add(g_reclaimed, b->n);
      stats_sub(g_sealed_bytes, b->bytes);
      g_sealed_batches.fetch_sub(1, std::memory_order_relaxed);
      g_done_seq.store(b->seq, std::memory_order_release);
      am_free(b);
      max--;
    }
  }
  t_reclaiming = 0;
  g_reclaiming.store(0, std::memory_order_release);
}

void backoff(uint32_t round) {
  if (round < 64)
    os_yield();
  else
    os_sleep_us(round < 256 ? 50 : 1000);
}

void thread_exit(void* v) {
  auto* r = static_cast<Record*>(v);
  t_nest = 0;
  t_perm = t_exec = t_offline = 0;
  r->state.store(0, std::memory_order_release);
  seal_open(r);
  {
    MuGuard g;
    r->in_use = 0;
  }
  t_rec = nullptr;
  am_epoch_self_.pin = nullptr;
  // No deleters here: this runs among the thread's TLS destructors, after
  // some of the application's thread_local objects (and a sanitizer's
  // thread state) may be gone. The worker, or the next thread that
  // retires, idles or waits, reclaims them.
  background_kick();
}

void fork_prepare() {
  // No reclaimer may be between detaching batches and running them.
  g_fork_took_reclaim = false;
  if (!t_reclaiming) {
    while (g_reclaiming.exchange(1, std::memory_order_acquire)) os_yield();
    g_fork_took_reclaim = true;
  }
  // No batch may be between its record and the sealed list (lock order:
  // open locks, then g_mu). Records are pushed at the head under g_mu: a
  // record registered while the others were being locked sends this round
  // again, for the new records only.
  Record* done = nullptr;  // the records from here down are locked
  for (;;) {
    Record* head = g_records.load(std::memory_order_acquire);
    for (Record* r = head; r != done; r = r->next) lock_open(r);
    done = head;
    pthread_mutex_lock(&g_mu);
    if (g_records.load(std::memory_order_acquire) == head) break;
    pthread_mutex_unlock(&g_mu);
  }
  g_fork_locked = done;
}

void fork_parent() {
  pthread_mutex_unlock(&g_mu);
  for (Record* r = g_fork_locked; r; r = r->next) unlock_open(r);
  if (g_fork_took_reclaim) g_reclaiming.store(0, std::memory_order_release);
}

// Only the forking thread lives on: the others' pins end and their open
// batches are sealed (the fork waited for every record lock, so whole).
void fork_child() {
  for (Record* r = g_records.load(std::memory_order_relaxed); r; r = r->next) {
    r->open_lock.store(0, std::memory_order_relaxed);
    if (r == t_rec || !r->in_use) continue;
    r->state.store(0, std::memory_order_relaxed);
    if (Batch* b = r->open) {
      r->open = nullptr;
      append_sealed(b);
    }
    r->in_use = 0;
  }
  // Unlocked, not re-initialised: this thread took it in fork_prepare (and
  // TSan counts a re-initialised mutex as still held).
  pthread_mutex_unlock(&g_mu);
  if (g_fork_took_reclaim) g_reclaiming.store(0, std::memory_order_relaxed);
  // The registration belongs to the parent's mm; only this thread runs, so
  // switching to fences is safe if the child cannot register.
  if (membarrier_on())
    __atomic_store_n(&am_epoch_reader_fence_, use_membarrier() ? 0 : 1, __ATOMIC_RELAXED);
}

// The worker's task: seal batches left open, advance, reclaim. Batches
// sealed in the last kWorkerAfterMs are left to the threads that retire:
// their deleters' frees are then local, not remote frees from the worker,
// which would also take a core from them. A thread that stays pinned makes
// advances fail: then look again only every 10 ms.
constexpr uint64_t kWorkerAfterMs = 2;

uint64_t background_task(uint64_t now) {
  uint64_t next = seal_stale_open();
  if (g_sealed_batches.load(std::memory_order_relaxed) == 0) return next;
  uint64_t head_ms = g_head_sealed_ms.load(std::memory_order_relaxed);
  if (now - head_ms < kWorkerAfterMs) {
    uint64_t at = head_ms + kWorkerAfterMs;
    return at < next ? at : next;
  }
  bool advanced = try_advance();
  reclaim();
  if (g_sealed_batches.load(std::memory_order_relaxed) == 0) return next;
  uint64_t again = now + (advanced ? 1 : 10);
  return again < next ? again : next;
}

void init_once() {
  __atomic_store_n(&am_epoch_reader_fence_, use_membarrier() ? 0 : 1, __ATOMIC_RELAXED);
  g_advanced_ms.store(os_now_ms(), std::memory_order_relaxed);
  pthread_key_create(&g_key, thread_exit);
  pthread_atfork(fork_prepare, fork_parent, fork_child);
  stats_add_hook(stats_hook);
  background_add_task(background_task);
}

// At start-up rather than at the first pin: a fork that caught another
// thread inside pthread_once would leave the child waiting on it forever.
__attribute__((constructor(102))) void epoch_start() { pthread_once(&g_once, init_once); }

Record* new_record() {  // under g_mu
  if (g_static_used < kStaticRecords) return &g_static_records[g_static_used++];
  // Later threads: one 4 KiB-aligned chunk at a time, never freed.
  static Record* chunk;
  static uint32_t left;
  if (left == 0) {
    constexpr size_t kChunk = 64 * 1024;
    chunk = static_cast<Record*>(os_map_aligned(kChunk, 4096));
    if (!chunk) return nullptr;
    left = kChunk / sizeof(Record);
  }
  left--;
  return chunk++;
}

// How many batches a pinned thread (a guard, an executor) runs when it
// seals one: its own share, and more while the backlog is over
// kMaxSealed, so that pinned retirers also catch up.
uint64_t pinned_share() {
  return g_sealed_batches.load(std::memory_order_relaxed) > kMaxSealed ? 4 : 1;
}

void open_entry(Record* r, const Entry& x) {
  lock_open(r);
  Batch* b = r->open;
  if (!b) {
    // Allocation never retires or pins, so holding the record's lock is
    // safe. From the default heap: am_heap_destroy of a bound heap must not
    // free the batch.
    b = static_cast<Batch*>(internal_malloc(sizeof(Batch)));
    if (!b) {
      unlock_open(r);
      misuse("am_retire", "out of memory for a batch; the block is leaked");
      return;
    }
    b->n = 0;
    b->bytes = 0;
    b->opened_ms = os_now_ms();
    r->open = b;
    background_kick();  // the worker seals it if this thread goes quiet
  }
  b->e[b->n] = x;
  b->bytes += x.bytes;
  // The entry before the count: a fork child that takes the batch of a
  // thread caught mid-append sees only whole entries.
  __atomic_store_n(&b->n, b->n + 1, __ATOMIC_RELEASE);
  bool full = b->n == kBatch;
  if (full) {
    r->open = nullptr;
    seal(b);
  }
  unlock_open(r);
  if (!full) return;
  seal_stale_open();
  maybe_advance();
  if (reclaim_due()) reclaim(t_nest == 0 ? ~uint64_t{0} : pinned_share());
  // Back-pressure. A pinned thread cannot wait for grace periods (its own
  // pin holds them up), but it can give the CPU to the thread that is
  // running deleters, for up to kMaxWaitMs: retiring faster than one
  // reclaimer can run deleters must not grow the backlog without bound.
  // Only when the oldest batch's grace period is over: if it still waits
  // for one, a pinned thread yielding holds it up too (two executors that
  // retire would each wait for the other's next idle point).
  if (t_nest != 0 && !t_reclaiming &&
      g_sealed_batches.load(std::memory_order_relaxed) > 2 * kMaxSealed && reclaim_due()) {
    uint64_t start = os_now_ms();
    while (g_sealed_batches.load(std::memory_order_relaxed) > 2 * kMaxSealed &&
           os_now_ms() - start < kMaxWaitMs) {
      reclaim(1);
      os_yield();
    }
  }
  // Unpinned, spend up to kMaxWaitMs helping grace periods along. Never
  // longer: the pinned thread that holds them up may be waiting for this one.
  if (g_sealed_batches.load(std::memory_order_relaxed) > kMaxSealed && t_nest == 0 &&
      !t_reclaiming) {
    uint64_t start = os_now_ms();
    for (uint32_t round = 0; g_sealed_batches.load(std::memory_order_relaxed) > kMaxSealed / 2 &&
                             os_now_ms() - start < kMaxWaitMs;
         round++) {
      if (!try_advance()) backoff(round < 64 ? round : 64);
      reclaim();
    }
  }
}

}  // namespace

namespace {

uint32_t clamp32(size_t n) { return n > 0xffffffffu ? 0xffffffffu : static_cast<uint32_t>(n); }

}  // namespace

void retire(const char* fn, void* p, void (*f)(void*, void*), void* ctx, bool free_after,
            bool owned) {
  uint32_t bytes = 0;
  if (free_after) {
    if (p == nullptr) return;
    // One lookup for the common case; the checks that say what is wrong
    // only when it fails.
    size_t n = alloc_block_bytes(p);
    if (AM_UNLIKELY(n == 0))
      return misuse(fn,
                    am_owns(p) ? "invalid pointer (not the start of a live block), ignored:"
                               : "invalid pointer (not allocated by amalloc), ignored:",
                    p);
    bytes = clamp32(n);
  } else if (owned) {
    bytes = clamp32(alloc_block_bytes(p));  // pending bytes, if p is a block of ours
  }
  Record* r = t_rec;
  if (!r) r = register_thread();
  open_entry(r, Entry{p, f, ctx, bytes, free_after ? 1u : 0u});
}

namespace {

AM_APPROXIMATE_READS void open_totals(uint64_t* n, uint64_t* bytes) {
  for (Record* r = g_records.load(std::memory_order_acquire); r; r = r->next) {
    lock_open(r);
    if (r->open) {
      *n += r->open->n;
      *bytes += r->open->bytes;
    }
    unlock_open(r);
  }
}

}  // namespace

Record* register_thread() {
  pthread_once(&g_once, init_once);
  Record* r = nullptr;
  {
    MuGuard g;
    for (Record* x = g_records.load(std::memory_order_relaxed); x; x = x->next)
      if (!x->in_use) {
        r = x;
        break;
      }
    if (!r) {
      r = new_record();
      if (!r) {
        Out o;
        o.str("amalloc: epoch: out of memory for a thread record; aborting\n").flush(2);
        __builtin_trap();
      }
      r->next = g_records.load(std::memory_order_relaxed);
      g_records.store(r, std::memory_order_release);
    }
    r->in_use = 1;
    r->state.store(0, std::memory_order_relaxed);
    r->tid = os_gettid();
  }
  t_rec = r;
  am_epoch_self_.pin = reinterpret_cast<uint64_t*>(&r->state);
  pthread_setspecific(g_key, r);
  return r;
}

AM_COLD void misuse(const char* fn, const char* what, const void* p) {
  Out o;
  o.str("amalloc: ").str(fn).str("(): ").str(what);
  if (p) o.ch(' ').hex(reinterpret_cast<uintptr_t>(p));
  o.ch('\n').flush(2);
}

// -- what the public API (epoch_api.cpp) needs of the collector -------------

// Two advances from now, whatever the pins show now, then reclaim.
void wait_grace_period() {
  uint64_t target = epoch_now().load(std::memory_order_acquire) + 2;
  for (uint32_t round = 0; epoch_now().load(std::memory_order_acquire) < target; round++)
    if (!try_advance()) backoff(round);
  reclaim();
}

// Every batch sealed so far (open ones sealed first) has run its deleters.
void wait_all_reclaimed() {
  for (Record* r = g_records.load(std::memory_order_acquire); r; r = r->next) seal_open(r);
  uint64_t target;
  {
    MuGuard g;
    target = g_seal_seq;
  }
  for (uint32_t round = 0; g_done_seq.load(std::memory_order_acquire) < target; round++) {
    bool advanced = try_advance();
    reclaim();
    if (!advanced || g_reclaiming.load(std::memory_order_relaxed)) backoff(round);
  }
}

AM_APPROXIMATE_READS void collector_stats(am_epoch_stats_t* out) {
  uint64_t open_n = 0, open_bytes = 0, threads = 0;
  open_totals(&open_n, &open_bytes);
  for (Record* r = g_records.load(std::memory_order_acquire); r; r = r->next) threads += r->in_use;
  out->epoch = epoch_now().load(std::memory_order_relaxed);
  out->threads = threads;
  out->reclaimed = g_reclaimed.load(std::memory_order_relaxed);
  out->retired = g_retired.load(std::memory_order_relaxed) + open_n;
  out->pending = out->retired - out->reclaimed;
  out->pending_bytes = g_sealed_bytes.load(std::memory_order_relaxed) + open_bytes;
  out->advances = g_advances.load(std::memory_order_relaxed);
  out->failed_advances = g_failed.load(std::memory_order_relaxed);
  out->stall_warnings = g_warnings.load(std::memory_order_relaxed);
}

static void idle_work(Record* r, bool guarded);

AM_NOINLINE void idle_slow(Record* r) {
  bool guarded = t_nest != t_perm;
  // The work every 8th call: it reads the clock and takes locks, and an
  // idle point may be called on every pass of a busy loop.
  bool work = (++r->idle_calls & 7) == 0;
  if (guarded) {
    // A guard that lives across a suspension point: the coroutine went to
    // sleep pinned, and this loop is about to block. (Once a second: a
    // loop may come here on every pass.)
    static __thread uint64_t t_reported_ms;
    uint64_t now = os_now_ms();
    if (t_reported_ms == 0 || now - t_reported_ms >= 1000) {
      t_reported_ms = now;
      misuse("am_executor_idle", "called while pinned (an epoch guard held across co_await?)");
    }
    if (work) idle_work(r, true);
    return;
  }
  if (work) {
    // Unpinned while it reclaims, so that its deleters hold up no one (a
    // deleter may wait for a writer that waits for a grace period), with
    // a nest count of 0, so that a deleter's guard pins for real.
    bool exec = t_perm;
    if (exec) {
      r->state.store(0, std::memory_order_release);
      t_perm = t_nest = 0;
    }
    idle_work(r, false);
    // Not if a deleter unregistered the executor or took it offline.
    if (exec && t_exec && !t_offline && t_nest == 0) t_perm = t_nest = 1;
  }
  if (t_perm) pin(r);  // the quiescent state: pinned again at the current epoch
}

// Seal this thread's open batch once it is kSealAfterMs old; advance and
// reclaim (only one batch while a guard is held).
static void idle_work(Record* r, bool guarded) {
  // Under the lock: another thread may seal (and free) a stale open batch.
  lock_open(r);
  Batch* b = r->open;
  if (b && os_now_ms() - b->opened_ms >= kSealAfterMs)
    r->open = nullptr;
  else
    b = nullptr;
  if (b) seal(b);
  unlock_open(r);
  if (g_sealed_batches.load(std::memory_order_relaxed) != 0) {
    maybe_advance();
    if (reclaim_due()) reclaim(guarded ? 1 : ~uint64_t{0});
  }
}

}  // namespace am::epoch

using namespace am::epoch;

static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t) &&
              alignof(std::atomic<uint64_t>) == alignof(uint64_t));

extern "C" {

__thread am_epoch_self_t am_epoch_self_;
uint64_t am_epoch_global_ = 1;
// A full fence on each pin until membarrier is known to work (init_once).
int am_epoch_reader_fence_ = 1;

}  // extern "C"
