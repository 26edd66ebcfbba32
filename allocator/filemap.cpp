#include "allocator/filemap.h"

#include <errno.h>
#include <stdlib.h>

#include <atomic>

#include "allocator/format.h"
#include "allocator/os.h"
#include "allocator/segment.h"

namespace am {

namespace {

int g_fd = -1;       // the memory file (made under g_lock)
bool g_failed;       // it could not be made: segments are anonymous
int g_fork_fd = -1;  // the copy a fork's child moves to
// The next fork's copy, made ahead: a fork cannot fail for want of a
// descriptor (at the limit, the fork used to abort). The copy's own
// descriptor closes after the fork, so its replacement always fits.
int g_spare_fd = -1;
uint64_t g_spare_id;  // os_file_id of the spare when it was made
bool g_fork_held;     // the fork made the slots read-only
std::atomic<uint8_t> g_fork_busy;
int g_fork_pid, g_fork_tid;  // the forking process and thread
bool g_fork_stdio;           // prepare holds glibc's FILE list lock
SignalMask g_fork_mask;      // the forking thread's signals, blocked meanwhile
// The range a mesh copy holds read-only.
std::atomic<uintptr_t> g_hold_lo, g_hold_hi;
// Writers that wait for a hold (a copy or a fork) sleep on g_hold_gen,
// which each end of a hold bumps; it wakes them only when g_hold_waiters
// says there are any (a merge holds a page for microseconds, and most
// have no waiter).
std::atomic<uint32_t> g_hold_gen, g_hold_waiters;
bool g_handler;  // ours is installed

// Slot 0 (header, page table, meshing bitmaps) stays private.
constexpr size_t kDataOff = kSlotSize;
constexpr size_t kDataSize = kSegmentSize - kSlotSize;

inline uint8_t* data_of(Segment* s) { return reinterpret_cast<uint8_t*>(s) + kDataOff; }
inline uint64_t off_of(const void* p) { return reinterpret_cast<uintptr_t>(p); }

AM_COLD void die(const char* what) {
  Out o;
  o.str("amalloc: fork(): ").str(what).str("; aborting\n").flush(2);
  abort();
}

// A data slot of a live file-backed segment: mapped read-write, except
// while a mesh copy or a fork holds it read-only.
bool in_file_data(uintptr_t a) {
  return segmap_fast(a) && segment_of(a)->file_backed && (a & kSegmentMask) >= kDataOff;
}

bool held(uintptr_t a) {
  if (a >= g_hold_lo.load(std::memory_order_seq_cst) &&
      a < g_hold_hi.load(std::memory_order_seq_cst))
    return true;
  return g_fork_busy.load(std::memory_order_seq_cst) && in_file_data(a);
}

// Consecutive faults of this thread at one address outside any hold.
__thread uintptr_t t_fault_at __attribute__((tls_model("initial-exec")));
__thread uint32_t t_fault_repeats __attribute__((tls_model("initial-exec")));

void child_switch();

void make_spare() {
  g_spare_fd = os_file_create();
  g_spare_id = g_spare_fd >= 0 ? os_file_id(g_spare_fd) : 0;
}

// The spare, unless the application closed it (and maybe opened another
// file on its number, which must not be written into or closed).
int take_spare() {
  int fd = g_spare_fd;
  g_spare_fd = -1;
  return fd >= 0 && g_spare_id != 0 && os_file_id(fd) == g_spare_id ? fd : -1;
}

// Sleeps until `a` is no longer held (a timeout guards against a missed
// wake-up, which the order of the accesses below should rule out).
void wait_hold_end(uintptr_t a) {
  g_hold_waiters.fetch_add(1, std::memory_order_seq_cst);
  for (;;) {
    uint32_t gen = g_hold_gen.load(std::memory_order_seq_cst);
    if (!held(a)) break;
    os_futex_wait(&g_hold_gen, gen, 10);
  }
  g_hold_waiters.fetch_sub(1, std::memory_order_seq_cst);
}

// After a hold ends (its range or the fork flag cleared).
void hold_ended() {
  g_hold_gen.fetch_add(1, std::memory_order_seq_cst);
  if (g_hold_waiters.load(std::memory_order_seq_cst)) os_futex_wake(&g_hold_gen, INT32_MAX);
}

AM_COLD void die_self_fault(uintptr_t a) {
  Out o;
  o.str("amalloc: fork(): the forking thread wrote into the heap at ")
      .hex(a)
      .str(
          " after amalloc's fork handler had begun its copy (a pthread_atfork handler "
          "registered before amalloc's?); aborting\n")
      .flush(2);
  abort();
}

// A write into a range being copied waits for the copy and is retried. A
// fault in file-backed memory that no hold covers any more lost the race
// with the end of its hold (the page is writable again by now): it is
// retried too, unless it keeps faulting at the same address. Any other
// fault, and any SIGSEGV sent by kill or raise, goes to the handler that
// was there before.
void on_fault(int sig, void* info, void* context) {
  uintptr_t a = os_fault_address(info);
  if (!os_fault_is_access(info)) return os_fault_chain(sig, info, context);
  int saved = errno;
  if (g_fork_busy.load(std::memory_order_seq_cst) && in_file_data(a)) {
    // glibc writes into the heap in the child before any atfork child
    // handler runs (the FILE locks): the child moves to its copy here.
    if (os_getpid() != g_fork_pid) {
      child_switch();
      errno = saved;
      return;
    }
    if (os_gettid() == g_fork_tid) die_self_fault(a);  // it would wait for itself
  }
  if (held(a)) {
    wait_hold_end(a);
    t_fault_at = 0;
    errno = saved;
    return;
  }
  if (in_file_data(a)) {
    t_fault_repeats = t_fault_at == a ? t_fault_repeats + 1 : 0;
    t_fault_at = a;
    if (t_fault_repeats < 1000) {
      os_yield();
      errno = saved;
      return;
    }
  }
  t_fault_at = 0;
  errno = saved;
  os_fault_chain(sig, info, context);
}

bool handler_ours() { return g_handler && os_fault_handler_is(on_fault); }

bool install_handler() {
  g_handler = os_fault_handler_install(on_fault);
  return g_handler;
}

// Calls f(segment, cached) for every file-backed segment.
template <class F>
void each_file_segment(F f) {
  segment_for_each_locked(
      [](Segment* s, bool cached, void* ctx) {
        if (s->file_backed) (*static_cast<F*>(ctx))(s, cached);
      },
      &f);
}

// Calls f(page) for every page (or free slot) of a live segment.
template <class F>
void each_page(Segment* s, F f) {
  const uint32_t step = static_cast<uint32_t>(page_slots(s));
  for (uint32_t i = 1; i + step <= kMaxPages; i += step) f(&s->pages[i]);
}

inline bool meshed_away(const Page* pg) {
  return pg->in_use && pg->meshed && pg->mesh_primary != pg;
}

}  // namespace

Segment* filemap_segment_map() {
  if (g_fd < 0) {
    if (g_failed) return nullptr;
    g_fd = os_file_create();
    if (g_fd >= 0) make_spare();
    if (g_spare_fd < 0 || !install_handler()) {
      if (g_fd >= 0) os_file_close(g_fd);
      if (g_spare_fd >= 0) os_file_close(g_spare_fd);
      g_fd = g_spare_fd = -1;
      g_failed = true;
      return nullptr;
    }
  }
  auto* s = static_cast<Segment*>(os_map_aligned(kSegmentSize, kSegmentSize));
  if (!s) return nullptr;
  if (!os_map_file(data_of(s), kDataSize, g_fd, off_of(data_of(s)))) {
    os_unmap(s, kSegmentSize);
    return nullptr;
  }
  return s;
}

void filemap_segment_release(Segment* s) { os_file_punch(g_fd, off_of(data_of(s)), kDataSize); }

void filemap_purge(Segment* s, uint8_t* p, size_t n) {
  uint8_t* data = data_of(s);
  if (p < data) {
    size_t head = p + n <= data ? n : static_cast<size_t>(data - p);
    os_purge(p, head);
    p += head;
    n -= head;
  }
  if (n > 0) os_purge_file(p, n);
}

bool filemap_point(uint8_t* area, const uint8_t* target, size_t n) {
  return os_map_file(area, n, g_fd, off_of(target));
}

void filemap_punch(const uint8_t* area, size_t n) { os_file_punch(g_fd, off_of(area), n); }

bool filemap_hold(uint8_t* area, size_t n) {
  if (!handler_ours()) return false;
  g_hold_lo.store(reinterpret_cast<uintptr_t>(area), std::memory_order_seq_cst);
  g_hold_hi.store(reinterpret_cast<uintptr_t>(area) + n, std::memory_order_seq_cst);
  if (os_protect(area, n, false)) return true;
  filemap_unhold();
  return false;
}

void filemap_unhold() {
  g_hold_hi.store(0, std::memory_order_seq_cst);
  g_hold_lo.store(0, std::memory_order_seq_cst);
  hold_ended();
}

void filemap_fork_prepare() {
  if (g_fd < 0) return;
  g_fork_fd = take_spare();
  if (g_fork_fd < 0) g_fork_fd = os_file_create();
  if (g_fork_fd < 0) die("cannot make a memory file for the child's heap");
  g_fork_pid = os_getpid();
  g_fork_tid = os_gettid();
  // No signal handler of this thread may write into the heap while it is
  // read-only: it would wait for this thread.
  os_block_signals(&g_fork_mask);
  // A thread that holds the FILE list lock and then writes into the heap
  // would wait for the copy, and fork for that lock: take it first.
  os_stdio_list_lock();
  g_fork_stdio = true;
  // Other threads' writes wait while the heap is copied. (Were our fault
  // handler replaced, they could not wait: a write racing the fork may
  // then reach the child.)
  g_fork_held = handler_ours();
  if (g_fork_held) {
    g_fork_busy.store(1, std::memory_order_seq_cst);
    each_file_segment([](Segment* s, bool) { os_protect(data_of(s), kDataSize, false); });
  }
  // Pages in use, each once (a meshed page's memory is its group's first
  // page's). Free slots' contents do not matter.
  each_file_segment([](Segment* s, bool cached) {
    if (cached) return;
    each_page(s, [s](Page* pg) {
      if (!pg->in_use || meshed_away(pg)) return;
      uint8_t* a = page_area(s, pg);
      if (!os_file_copy(g_fork_fd, g_fd, a, off_of(a), page_area_size(s)))
        die("out of memory copying the heap");
    });
  });
}

// The parent keeps its file and goes on at once.
void filemap_fork_parent() {
  if (g_fork_fd < 0) return;
  os_file_close(g_fork_fd);
  g_fork_fd = -1;
  make_spare();  // if this fails, the next fork tries again
  if (g_fork_held)
    each_file_segment([](Segment* s, bool) { os_protect(data_of(s), kDataSize, true); });
  g_fork_busy.store(0, std::memory_order_seq_cst);
  hold_ended();
  if (g_fork_stdio) os_stdio_list_unlock();
  g_fork_stdio = false;
  os_restore_signals(&g_fork_mask);
}

namespace {

// The child moves to the copy, before any of its code runs (from the fault
// handler when glibc's own child-side work writes into the heap first, or
// from the child handler): the parent's threads write into the old file
// again from now on. mmap and close only, so it may run in the handler.
void child_switch() {
  if (g_fork_fd < 0) return;
  each_file_segment([](Segment* s, bool) {
    // The whole range (slots past the last medium page too), then the
    // meshed pages onto their groups' memory.
    if (!os_map_file(data_of(s), kDataSize, g_fork_fd, off_of(data_of(s))))
      die("cannot map the heap's copy");
    each_page(s, [s](Page* pg) {
      if (!meshed_away(pg)) return;
      uint8_t* a = page_area(s, pg);
      const uint8_t* t = page_area(segment_of_page(pg->mesh_primary), pg->mesh_primary);
      if (!os_map_file(a, page_area_size(s), g_fork_fd, off_of(t)))
        die("cannot map the heap's copy");
    });
  });
  os_file_close(g_fd);
  g_fd = g_fork_fd;
  g_fork_fd = -1;
  filemap_unhold();
  g_fork_busy.store(0, std::memory_order_seq_cst);
}

}  // namespace

void filemap_fork_child() {
  g_hold_waiters.store(0, std::memory_order_relaxed);  // the waiters were the parent's threads
  bool forked = g_fork_stdio;
  child_switch();
  if (!forked) return;
  make_spare();  // the parent's file is closed: it fits
  // glibc resets the FILE list lock in the child of a multithreaded
  // parent only; ours must go either way.
  os_stdio_list_reset();
  g_fork_stdio = false;
  os_restore_signals(&g_fork_mask);
}

}  // namespace am
