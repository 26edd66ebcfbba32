// Heaps made by the application: binding, allocation from a heap, arenas
// (destroy), deletion with live blocks, blocks freed by other threads, the
// idle point, and the C++ wrappers.
#include <amalloc/amalloc.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <amalloc/amalloc.hpp>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory_resource>
#include <string>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"

namespace {

TEST(Heap, BindMakesMallocComeFromTheHeap) {
  am_heap_t* h = am_heap_new();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(am_heap_bind(h), nullptr);  // the default heap was current
  void* p = am_malloc(100);
  void* big = am_malloc(300000);
  EXPECT_EQ(am_heap_bind(nullptr), h);
  // destroy frees both: their pages go back, so the pointers are invalid now.
  am_heap_destroy(h);
  EXPECT_EQ(am_owns(big), 0) << "a large block of a destroyed heap must be released";
  (void)p;
  am_heap_delete(h);
}

TEST(Heap, DestroyFreesEveryBlockAndTheHeapStaysUsable) {
  am_heap_t* h = am_heap_new();
  am_stats_t s0, s1, s2;
  am_stats_get(&s0);
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 20000; i++) {
      void* p = am_heap_malloc(h, 16 + (i % 300));
      ASSERT_NE(p, nullptr);
      memset(p, 0xab, 16);
    }
    void* large = am_heap_malloc(h, 1 << 20);
    ASSERT_NE(large, nullptr);
    memset(large, 1, 1 << 20);
    am_stats_get(&s1);
    EXPECT_GT(s1.in_use_bytes, s0.in_use_bytes + (2u << 20));
    am_heap_destroy(h);
    am_stats_get(&s2);
    EXPECT_LE(s2.in_use_bytes, s0.in_use_bytes + 4096) << "round " << round;
  }
  am_heap_delete(h);
}

TEST(Heap, DeleteKeepsLiveBlocksValid) {
  am_heap_t* h = am_heap_new();
  std::vector<char*> blocks;
  for (int i = 0; i < 5000; i++) {
    char* p = static_cast<char*>(am_heap_malloc(h, 48));
    snprintf(p, 48, "block %d", i);
    blocks.push_back(p);
  }
  char* large = static_cast<char*>(am_heap_malloc(h, 200000));
  strcpy(large, "large");
  am_heap_delete(h);
  for (int i = 0; i < 5000; i++) {
    char want[48];
    snprintf(want, sizeof want, "block %d", i);
    ASSERT_STREQ(blocks[i], want);
    ASSERT_EQ(am_owns(blocks[i]), 1);
  }
  EXPECT_STREQ(large, "large");
  // Freed by whoever: the pages were taken over.
  std::thread([&] {
    for (size_t i = 0; i < blocks.size(); i += 2) am_free(blocks[i]);
  }).join();
  for (size_t i = 1; i < blocks.size(); i += 2) am_free(blocks[i]);
  am_free(large);
  EXPECT_EQ(amt::bad_frees_since_mark(), 0u);
}

TEST(Heap, CallocReallocMemalignFromAHeap) {
  amalloc::heap h;
  auto* z = static_cast<unsigned char*>(h.calloc(100, 10));
  for (int i = 0; i < 1000; i++) ASSERT_EQ(z[i], 0);
  char* r = static_cast<char*>(h.malloc(10));
  strcpy(r, "123456789");
  r = static_cast<char*>(h.realloc(r, 100000));
  EXPECT_STREQ(r, "123456789");
  void* a = h.memalign(4096, 100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 4096, 0u);
  am_free(z);
  am_free(r);
  am_free(a);
}

TEST(Heap, ABoundHeapCannotBeBoundByASecondThread) {
  am_heap_t* h = am_heap_new();
  am_heap_bind(h);
  std::thread([&] {
    errno = 0;
    EXPECT_EQ(am_heap_bind(h), h);
    EXPECT_EQ(errno, EBUSY);
  }).join();
  am_heap_bind(nullptr);
  std::thread([&] {
    EXPECT_EQ(am_heap_bind(h), nullptr);
    void* p = am_malloc(64);
    EXPECT_EQ(am_heap_bind(nullptr), h);
    am_free(p);
  }).join();
  am_heap_delete(h);
}

TEST(Heap, AThreadThatExitsReleasesItsBoundHeap) {
  am_heap_t* h = am_heap_new();
  std::vector<void*> kept;
  std::thread([&] {
    am_heap_bind(h);
    for (int i = 0; i < 100; i++) kept.push_back(am_malloc(200));
  }).join();
  // The exited thread no longer holds it: this thread may bind it.
  EXPECT_EQ(am_heap_bind(h), nullptr);
  for (void* p : kept) am_free(p);
  am_heap_bind(nullptr);
  am_heap_delete(h);
}

TEST(Heap, IdlePointMakesRemoteFreesReusable) {
  // A consumer frees everything a producer allocated; the producer stops
  // allocating and only calls the idle point: the memory must come back.
  am_heap_t* h = am_heap_new();
  am_heap_bind(h);
  std::vector<void*> blocks;
  for (int i = 0; i < 100000; i++) blocks.push_back(am_malloc(64));
  am_stats_t before;
  am_stats_get(&before);
  std::thread([&] {
    for (void* p : blocks) am_free(p);
  }).join();
  am_executor_idle();
  am_stats_t after;
  am_stats_get(&after);
  EXPECT_LT(after.in_use_bytes + 6000000, before.in_use_bytes)
      << "in use before " << before.in_use_bytes << " after idle " << after.in_use_bytes;
  am_heap_bind(nullptr);
  am_heap_delete(h);
}

TEST(Heap, PmrResourceAndStlAllocator) {
  amalloc::heap h;
  {
    amalloc::heap_resource res(h);
    std::pmr::vector<std::pmr::string> v(&res);
    for (int i = 0; i < 1000; i++) v.emplace_back(std::string(40, 'a' + i % 26));
    EXPECT_EQ(v.size(), 1000u);
    EXPECT_EQ(am_owns(v.data()), 1);
    EXPECT_EQ(am_owns(v[999].data()), 1);
  }
  {
    std::vector<int, amalloc::allocator<int>> v{amalloc::allocator<int>(h)};
    for (int i = 0; i < 10000; i++) v.push_back(i);
    EXPECT_EQ(am_owns(v.data()), 1);
    EXPECT_EQ(v[9999], 9999);
  }
  h.destroy();
}

TEST(Heap, ScopeBindsAndRestores) {
  amalloc::heap outer, inner;
  {
    amalloc::heap_scope a(outer);
    {
      amalloc::heap_scope b(inner);
      EXPECT_EQ(am_heap_bind(inner.get()), inner.get());  // rebinding the current heap
    }
    EXPECT_EQ(am_heap_bind(outer.get()), outer.get());
  }
  EXPECT_EQ(am_heap_bind(nullptr), nullptr);
}

// The epoch collector's batches come from the default heap: retirements
// made while an arena is bound survive its destroy.
TEST(Heap, RetirementsWhileAHeapIsBoundSurviveItsDestroy) {
  std::thread([] {
    void* warm = am_malloc(8);  // the thread's epoch record, no open batch
    am_retire(warm);
    am_epoch_barrier();
    void* early[3];  // blocks of the default heap, retired with the arena bound
    for (void*& x : early) x = am_malloc(64);
    amalloc::heap arena;
    {
      amalloc::heap_scope scope(arena);
      for (void* x : early) am_retire(x);  // opens a batch
    }
    arena.destroy();
    std::vector<std::pair<char*, size_t>> blocks;
    {
      amalloc::heap_scope scope(arena);  // reuses the destroyed pages
      for (size_t size = 256; size <= 4096; size += size / 4)
        for (int i = 0; i < 32; i++) {
          blocks.emplace_back(static_cast<char*>(am_malloc(size)), size);
          memset(blocks.back().first, 'B', size);
        }
    }
    for (int i = 0; i < 3; i++) am_retire(am_malloc(64));  // appends to the batch
    am_epoch_barrier();
    for (auto [b, size] : blocks)
      for (size_t j = 0; j < size; j++) ASSERT_EQ(b[j], 'B') << "the batch overlapped a block";
  }).join();
  EXPECT_EQ(amt::bad_frees_since_mark(), 0u);
}

// Destroying or deleting a heap that another thread has bound would pull
// its pages from under that thread: refused with EBUSY.
TEST(Heap, DestroyAndDeleteOfAHeapBoundElsewhereAreRefused) {
  am_heap_t* h = am_heap_new();
  std::atomic<int> step{0};
  std::thread t([&] {
    am_heap_bind(h);
    char* p = static_cast<char*>(am_malloc(100));
    memset(p, 'A', 100);
    step = 1;
    while (step.load() != 2) std::this_thread::yield();
    for (int i = 0; i < 100; i++) EXPECT_EQ(p[i], 'A');
    char* q = static_cast<char*>(am_malloc(100));  // the heap still works
    EXPECT_NE(q, nullptr);
    am_free(q);
    am_free(p);
    am_heap_bind(nullptr);
  });
  while (step.load() != 1) std::this_thread::yield();
  errno = 0;
  am_heap_destroy(h);
  EXPECT_EQ(errno, EBUSY);
  errno = 0;
  am_heap_delete(h);
  EXPECT_EQ(errno, EBUSY);
  step = 2;
  t.join();
  errno = 0;
  am_heap_delete(h);  // unbound now
  EXPECT_EQ(errno, 0);
}

// A bind on another thread racing a destroy: either the destroy is refused
// or the bind is, never a destroy under a thread that has the heap bound.
TEST(Heap, DestroyRacingABindOnAnotherThreadNeverPullsPagesFromIt) {
  am_heap_t* h = am_heap_new();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> damaged{0}, rounds{0};
  std::string err = amt::capture_stderr([&] {
    std::thread user([&] {
      while (!stop) {
        if (am_heap_bind(h) != h && errno == EBUSY) continue;  // the destroyer has it
        char* p[8];
        for (char*& x : p) {
          x = static_cast<char*>(am_malloc(64));
          memset(x, 'U', 64);
        }
        for (char* x : p)
          if (amt::check_bytes(x, 64, 'U') != SIZE_MAX) damaged++;
        for (char* x : p) am_free(x);
        am_heap_bind(nullptr);
        rounds++;
      }
    });
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(300) ||
           rounds.load() < 100)
      am_heap_destroy(h);
    stop = true;
    user.join();
  });
  EXPECT_EQ(damaged.load(), 0u);
  // (Refusals are reported too; a bad free would be one of free's.)
  EXPECT_EQ(err.find("free()"), std::string::npos) << err.substr(0, 2000);
  am_heap_delete(h);
}

#ifndef NDEBUG
// Debug builds check that a heap is used by one thread at a time.
TEST(HeapDebugCheck, AllocatingFromAHeapBoundOnAnotherThreadAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        am_heap_t* h = am_heap_new();
        std::atomic<bool> bound{false};
        std::thread t([&] {
          am_heap_bind(h);
          bound = true;
          for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
        });
        t.detach();
        while (!bound) std::this_thread::yield();
        void* p = am_heap_malloc(h, 64);
        am_free(p);
      },
      "am_heap_malloc\\(\\): heap 0x[0-9a-f]+ is bound on another thread");
}

TEST(HeapDebugCheck, TwoThreadsInsideCallsOnOneHeapAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        am_heap_t* h = am_heap_new();
        auto churn = [h] {
          for (;;) {
            void* p[16];
            for (void*& x : p) x = am_heap_realloc(h, am_heap_malloc(h, 100), 5000);
            for (void* x : p) am_free(x);
          }
        };
        std::thread(churn).detach();
        churn();
      },
      "heap 0x[0-9a-f]+ is in use on another thread at the same time");
}

// Binds a heap while another thread is held inside am_heap_realloc on it:
// its copy faults on a page of the old block made inaccessible, and the
// SIGSEGV handler waits there.
std::atomic<bool> g_parked{false}, g_returned{false};
void bind_while_another_thread_is_inside_a_call() {
  am_heap_t* h = am_heap_new();
  constexpr size_t kSize = 32768;
  char* p = static_cast<char*>(am_heap_malloc(h, kSize));
  const uintptr_t pg = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  char* page = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + pg - 1) & ~(pg - 1));
  struct sigaction sa = {};
  sa.sa_handler = [](int) {
    g_parked = true;
    for (;;) pause();
  };
  if (sigaction(SIGSEGV, &sa, nullptr) != 0 || mprotect(page, pg, PROT_NONE) != 0) return;
  std::thread([h, p] {
    am_heap_realloc(h, p, 4 * kSize);
    g_returned = true;  // no fault: the death test fails instead of hanging
  }).detach();
  while (!g_parked && !g_returned) std::this_thread::yield();
  if (g_parked) am_heap_bind(h);
}

TEST(HeapDebugCheck, BindingAHeapAnotherThreadIsInsideACallOnAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(bind_while_another_thread_is_inside_a_call(),
               "am_heap_bind\\(\\): heap 0x[0-9a-f]+ is in use on another thread at the same time");
}

TEST(HeapDebugCheck, AGuardReleasedOnAnotherThreadAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        auto* g = new amalloc::epoch::guard;
        std::thread([g] { delete g; }).join();
      },
      "epoch::guard released on another thread");
}
#endif

}  // namespace
