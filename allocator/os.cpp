#include "allocator/os.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "allocator/config.h"
#include "allocator/options.h"
#include "allocator/stats.h"

namespace am {

namespace {

// Keep errno as the caller left it: a failed mmap must not leak its errno
// into a successful malloc.
struct ErrnoGuard {
  int saved = errno;
  ~ErrnoGuard() { errno = saved; }
};

bool in_range(void* p, size_t size) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return a + size <= (uintptr_t{1} << kAddressBits);
}

}  // namespace

void* os_map_aligned(size_t size, size_t align, size_t offset) {
  ErrnoGuard guard;
  constexpr int kProt = PROT_READ | PROT_WRITE;
  constexpr int kFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  if (size + align < size) return nullptr;
  // Try where the last aligned mapping ended first: the kernel usually
  // honours the hint, and the result is then aligned with one call.
  static std::atomic<uintptr_t> hint{0};
  uintptr_t h = hint.load(std::memory_order_relaxed);
  if (h != 0 && offset == 0 && (h & (align - 1)) == 0) {
    void* q = mmap(reinterpret_cast<void*>(h), size, kProt, kFlags, -1, 0);
    if (q != MAP_FAILED) {
      stats_add(g_os_stats.mmap_calls, 1);
      if ((reinterpret_cast<uintptr_t>(q) & (align - 1)) == 0 && in_range(q, size)) {
        hint.store(reinterpret_cast<uintptr_t>(q) + ((size + align - 1) & ~(align - 1)),
                   std::memory_order_relaxed);
        stats_add(g_os_stats.reserved_bytes, size);
        return q;
      }
      munmap(q, size);
    }
  }
  // Over-map by the alignment and trim both ends.
  size_t total = size + align;
  void* raw = mmap(nullptr, total, kProt, kFlags, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  stats_add(g_os_stats.mmap_calls, 1);
  uintptr_t a = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = ((a + offset + align - 1) & ~(uintptr_t{align} - 1)) - offset;
  if (aligned > a) munmap(raw, aligned - a);
  uintptr_t end = a + total;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  void* p = reinterpret_cast<void*>(aligned);
  if (!in_range(p, size)) {
    munmap(p, size);
    return nullptr;
  }
  hint.store(aligned + ((size + align - 1) & ~(align - 1)), std::memory_order_relaxed);
  stats_add(g_os_stats.reserved_bytes, size);
  return p;
}

void os_unmap(void* p, size_t size) {
  ErrnoGuard guard;
  munmap(p, size);
  stats_add(g_os_stats.munmap_calls, 1);
  stats_sub(g_os_stats.reserved_bytes, size);
}

void os_purge(void* p, size_t size) {
  ErrnoGuard guard;
  // MADV_DONTNEED by default: RSS drops now, so it tells the truth.
  // MADV_FREE (AMALLOC_PURGE=free) leaves the pages until the kernel needs
  // them; a kernel without it gets MADV_DONTNEED.
  if (!g_options.purge_free || madvise(p, size, MADV_FREE) != 0) madvise(p, size, MADV_DONTNEED);
  stats_add(g_os_stats.purged_bytes, size);
  stats_add(g_os_stats.purge_calls, 1);
}

void* os_remap_aligned(void* p, size_t old_size, size_t new_size, size_t align) {
  ErrnoGuard guard;
  // In place first (shrinking always is; growing is when the range after
  // the mapping is free).
  void* r = mremap(p, old_size, new_size, 0);
  if (r != MAP_FAILED) {
    stats_add(g_os_stats.mmap_calls, 1);
    stats_add(g_os_stats.reserved_bytes, new_size);
    stats_sub(g_os_stats.reserved_bytes, old_size);
    return r;
  }
  // Reserve an aligned range and move the pages there: the kernel moves
  // page tables, no byte is copied.
  size_t total = new_size + align;
  void* res = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (res == MAP_FAILED) return nullptr;
  uintptr_t a = reinterpret_cast<uintptr_t>(res);
  uintptr_t target = (a + align - 1) & ~(uintptr_t{align} - 1);
  if (!in_range(reinterpret_cast<void*>(target), new_size)) {
    munmap(res, total);
    return nullptr;
  }
  r = mremap(p, old_size, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(target));
  if (r == MAP_FAILED) {
    munmap(res, total);
    return nullptr;
  }
  if (target > a) munmap(res, target - a);
  uintptr_t end = a + total;
  if (end > target + new_size)
    munmap(reinterpret_cast<void*>(target + new_size), end - (target + new_size));
  stats_add(g_os_stats.mmap_calls, 1);
  stats_add(g_os_stats.reserved_bytes, new_size);
  stats_sub(g_os_stats.reserved_bytes, old_size);
  return r;
}

int os_file_create() {
  ErrnoGuard guard;
  int fd = static_cast<int>(syscall(SYS_memfd_create, "amalloc", MFD_CLOEXEC));
  if (fd < 0) return -1;
  if (ftruncate(fd, static_cast<off_t>(uint64_t{1} << kAddressBits)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

uint64_t os_file_id(int fd) {
  ErrnoGuard guard;
  struct stat st;
  if (fstat(fd, &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_ino) ^ (static_cast<uint64_t>(st.st_dev) << 40);
}

void os_file_close(int fd) {
  ErrnoGuard guard;
  close(fd);
}

bool os_map_file(void* p, size_t size, int fd, uint64_t off) {
  ErrnoGuard guard;
  void* q =
      mmap(p, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, static_cast<off_t>(off));
  stats_add(g_os_stats.mmap_calls, 1);
  return q == p;
}

void os_file_punch(int fd, uint64_t off, size_t size) {
  ErrnoGuard guard;
  fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
            static_cast<off_t>(size));
}

void os_purge_file(void* p, size_t size) {
  ErrnoGuard guard;
  madvise(p, size, MADV_REMOVE);
  stats_add(g_os_stats.purged_bytes, size);
  stats_add(g_os_stats.purge_calls, 1);
}

bool os_file_copy(int to, int from, const void* p, uint64_t off, size_t size) {
  ErrnoGuard guard;
  const auto* base = static_cast<const uint8_t*>(p);
  off_t pos = static_cast<off_t>(off), end = static_cast<off_t>(off + size);
  while (pos < end) {
    off_t data = lseek(from, pos, SEEK_DATA);
    if (data < 0 || data >= end) return true;
    off_t hole = lseek(from, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    for (off_t at = data; at < hole;) {
      ssize_t w =
          pwrite(to, base + (at - static_cast<off_t>(off)), static_cast<size_t>(hole - at), at);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      at += w;
    }
    pos = hole;
  }
  return true;
}

bool os_protect(void* p, size_t size, bool writable) {
  ErrnoGuard guard;
  return mprotect(p, size, writable ? PROT_READ | PROT_WRITE : PROT_READ) == 0;
}

namespace {
struct sigaction g_prev_segv;  // what our SIGSEGV handler replaced
}  // namespace

bool os_fault_handler_install(FaultHandler handler) {
  ErrnoGuard guard;
  struct sigaction sa = {};
  sa.sa_sigaction = reinterpret_cast<void (*)(int, siginfo_t*, void*)>(handler);
  // SA_NODEFER: a fault inside the chained handler is not blocked.
  // SA_ONSTACK: a stack overflow reaches a handler on the alternate stack.
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  return sigaction(SIGSEGV, &sa, &g_prev_segv) == 0;
}

bool os_fault_handler_is(FaultHandler handler) {
  ErrnoGuard guard;
  struct sigaction cur;
  if (sigaction(SIGSEGV, nullptr, &cur) != 0) return false;
  return (cur.sa_flags & SA_SIGINFO) &&
         cur.sa_sigaction == reinterpret_cast<void (*)(int, siginfo_t*, void*)>(handler);
}

uintptr_t os_fault_address(void* info) {
  return reinterpret_cast<uintptr_t>(static_cast<siginfo_t*>(info)->si_addr);
}

bool os_fault_is_access(void* info) { return static_cast<siginfo_t*>(info)->si_code > 0; }

void os_fault_chain(int sig, void* info, void* context) {
  if (g_prev_segv.sa_flags & SA_SIGINFO) {
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &g_prev_segv.sa_mask, &old);
    g_prev_segv.sa_sigaction(sig, static_cast<siginfo_t*>(info), context);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  } else if (g_prev_segv.sa_handler == SIG_IGN && !os_fault_is_access(info)) {
    // A SIGSEGV sent by kill or raise, ignored as before.
  } else if (g_prev_segv.sa_handler == SIG_DFL || g_prev_segv.sa_handler == SIG_IGN) {
    // The default action: a faulting access is retried on return and
    // faults again; a sent signal is sent again.
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGSEGV, &dfl, nullptr);
    if (!os_fault_is_access(info)) syscall(SYS_tgkill, getpid(), os_gettid(), sig);
  } else {
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &g_prev_segv.sa_mask, &old);
    g_prev_segv.sa_handler(sig);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
}

static_assert(sizeof(sigset_t) <= sizeof(SignalMask::raw));

void os_block_signals(SignalMask* old) {
  // Not the synchronous ones: a blocked fault kills the process before any
  // handler (ours included) sees it.
  sigset_t all;
  sigfillset(&all);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP}) sigdelset(&all, sig);
  pthread_sigmask(SIG_BLOCK, &all, reinterpret_cast<sigset_t*>(old->raw));
}

void os_restore_signals(const SignalMask* old) {
  pthread_sigmask(SIG_SETMASK, reinterpret_cast<const sigset_t*>(old->raw), nullptr);
}

int os_getpid() { return static_cast<int>(syscall(SYS_getpid)); }

}  // namespace am

// glibc exports these (libio); fork uses them around its own work.
extern "C" void _IO_list_lock(void);
extern "C" void _IO_list_unlock(void);
extern "C" void _IO_list_resetlock(void);

namespace am {

void os_stdio_list_lock() { _IO_list_lock(); }
void os_stdio_list_unlock() { _IO_list_unlock(); }
void os_stdio_list_reset() { _IO_list_resetlock(); }

uint64_t os_now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

uint64_t os_coarse_resolution_ms() {
  // Threads that race here store the same value.
  static std::atomic<uint64_t> res_ms{0};
  uint64_t ms = res_ms.load(std::memory_order_relaxed);
  if (ms == 0) {
    struct timespec ts = {0, 10000000};  // 10 ms (HZ=100) if unknown
    clock_getres(CLOCK_MONOTONIC_COARSE, &ts);
    ms = static_cast<uint64_t>(ts.tv_sec) * 1000 +
         (static_cast<uint64_t>(ts.tv_nsec) + 999999) / 1000000;
    if (ms == 0) ms = 1;
    res_ms.store(ms, std::memory_order_relaxed);
  }
  return ms;
}

uint64_t os_now_us() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
}

bool os_membarrier_register() {
  ErrnoGuard guard;
  long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return false;
  return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

bool os_membarrier() {
  ErrnoGuard guard;
  return syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
}

void os_thread_name(int tid, char* out) {
  ErrnoGuard guard;
  out[0] = 0;
  char path[48] = "/proc/self/task/";
  char digits[12];
  int n = 0;
  for (unsigned v = static_cast<unsigned>(tid); n == 0 || v != 0; v /= 10)
    digits[n++] = char('0' + v % 10);
  size_t at = sizeof("/proc/self/task/") - 1;
  while (n > 0) path[at++] = digits[--n];
  memcpy(path + at, "/comm", sizeof("/comm"));
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t got = read(fd, out, 15);
  close(fd);
  if (got <= 0) return;
  out[got] = 0;
  if (out[got - 1] == '\n') out[got - 1] = 0;
}

int os_gettid() { return static_cast<int>(syscall(SYS_gettid)); }

void os_yield() { sched_yield(); }

void os_futex_wait(std::atomic<uint32_t>* word, uint32_t expected, uint32_t timeout_ms) {
  ErrnoGuard guard;
  struct timespec ts = {static_cast<time_t>(timeout_ms / 1000),
                        static_cast<long>(timeout_ms % 1000) * 1000000};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, &ts, nullptr,
          0);
}

void os_futex_wake(std::atomic<uint32_t>* word, int count) {
  ErrnoGuard guard;
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr,
          0);
}

void os_sleep_us(uint32_t us) {
  ErrnoGuard guard;
  struct timespec ts = {static_cast<time_t>(us / 1000000), static_cast<long>(us % 1000000) * 1000};
  nanosleep(&ts, nullptr);
}

void os_write(int fd, const char* s, size_t n) {
  ErrnoGuard guard;
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    s += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace am
