// Every function of the malloc family in include/amalloc/amalloc.h, with the
// glibc 2.36 error conventions.
#include <gtest/gtest.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <set>
#include <vector>

#include "amalloc_test_support.h"

namespace {

constexpr std::size_t kTooBig = static_cast<std::size_t>(PTRDIFF_MAX) + 1;

// The compiler must not reason about our calls as if they were malloc's.
template <class T>
T opaque(T v) {
  asm volatile("" : "+r"(v));
  return v;
}

TEST(Api, Version) {
  ASSERT_NE(am_version(), nullptr);
  EXPECT_STREQ(am_version(), AMALLOC_VERSION_STRING);
  EXPECT_STREQ(am_version(), "0.1.0");
}

TEST(Api, MallocFreeBasic) {
  for (std::size_t n :
       {1ul, 8ul, 16ul, 17ul, 100ul, 1000ul, 10000ul, 100000ul, 1000000ul, 10000000ul}) {
    void* p = am_malloc(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_TRUE(amt::is_aligned(p, 16)) << n;
    EXPECT_GE(am_usable_size(p), n);
    EXPECT_EQ(am_owns(p), 1);
    std::memset(p, 0x5A, n);
    am_free(p);
  }
}

TEST(Api, MallocZeroIsUniqueNonNull) {
  std::set<void*> seen;
  std::vector<void*> v;
  for (int i = 0; i < 100; ++i) {
    void* p = am_malloc(opaque<std::size_t>(0));
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(amt::is_aligned(p, 16));
    EXPECT_TRUE(seen.insert(p).second) << "am_malloc(0) returned " << p << " twice";
    EXPECT_EQ(am_owns(p), 1);
    v.push_back(p);
  }
  for (void* p : v) am_free(p);
}

TEST(Api, FreeNullIsNoop) {
  am_free(nullptr);
  am_free_sized(nullptr, 0);
  am_free_sized(nullptr, 100);
  SUCCEED();
}

TEST(Api, UsableSizeOfNullIsZero) {
  EXPECT_EQ(am_usable_size(nullptr), 0u);
}

TEST(Api, MallocTooBigIsEnomem) {
  for (std::size_t n :
       {kTooBig, SIZE_MAX, SIZE_MAX - 15, SIZE_MAX - 4096, static_cast<std::size_t>(PTRDIFF_MAX)}) {
    errno = 0;
    void* p = am_malloc(opaque(n));
    EXPECT_EQ(p, nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << n;
    if (p) am_free(p);
  }
}

TEST(Api, FreeSized) {
  std::vector<std::size_t> sizes = {1,    16,    100,   128,    129,     1000,
                                    4096, 65536, 65537, 200000, 5u << 20};
  for (int round = 0; round < 3; ++round) {
    std::vector<void*> v;
    for (std::size_t n : sizes) {
      void* p = am_malloc(n);
      ASSERT_NE(p, nullptr);
      amt::fill_pattern(p, n, n);
      v.push_back(p);
    }
    for (std::size_t i = 0; i < v.size(); ++i) {
      ASSERT_EQ(amt::check_pattern(v[i], sizes[i], sizes[i]), SIZE_MAX);
      am_free_sized(v[i], sizes[i]);
    }
  }
  // Sized free of a calloc'd and of an aligned block.
  void* c = am_calloc(10, 10);
  ASSERT_NE(c, nullptr);
  am_free_sized(c, 100);
  void* a = am_aligned_alloc(256, 300);
  ASSERT_NE(a, nullptr);
  am_free_sized(a, 300);
}

// ---- calloc ---------------------------------------------------------------

TEST(Api, CallocZeroes) {
  for (std::size_t n : {1ul, 7ul, 16ul, 100ul, 4096ul, 65536ul, 100000ul, 3000000ul, 9000000ul}) {
    unsigned char* p = static_cast<unsigned char*>(am_calloc(1, n));
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(amt::is_aligned(p, 16));
    EXPECT_EQ(amt::check_bytes(p, n, 0), SIZE_MAX) << "calloc(1, " << n << ") not zero";
    am_free(p);
  }
  void* p = am_calloc(0, 0);
  ASSERT_NE(p, nullptr);
  am_free(p);
  p = am_calloc(0, 100);
  ASSERT_NE(p, nullptr);
  am_free(p);
}

TEST(Api, CallocOverflowIsEnomem) {
  struct {
    std::size_t count, size;
  } cases[] = {
      {SIZE_MAX / 2 + 1, 2}, {2, SIZE_MAX / 2 + 1},
      {SIZE_MAX, SIZE_MAX},  {(1ul << 32) + 1, 1ul << 32},
      {1, kTooBig},          {kTooBig, 1},
      {SIZE_MAX, 1},         {1ul << 31, 1ul << 32},  // 2^63 == PTRDIFF_MAX + 1
  };
  for (auto c : cases) {
    errno = 0;
    void* p = am_calloc(opaque(c.count), opaque(c.size));
    EXPECT_EQ(p, nullptr) << c.count << " x " << c.size;
    EXPECT_EQ(errno, ENOMEM) << c.count << " x " << c.size;
    if (p) am_free(p);
  }
}

// ---- realloc --------------------------------------------------------------

TEST(Api, ReallocNullIsMalloc) {
  void* p = am_realloc(nullptr, 100);
  ASSERT_NE(p, nullptr);
  EXPECT_GE(am_usable_size(p), 100u);
  EXPECT_TRUE(amt::is_aligned(p, 16));
  am_free(p);
  p = am_realloc(nullptr, 0);  // == malloc(0): a unique pointer
  ASSERT_NE(p, nullptr);
  am_free(p);
}

TEST(Api, ReallocToZeroFreesAndReturnsNull) {
  for (std::size_t n : {16ul, 1000ul, 100000ul, 8000000ul}) {
    void* p = am_malloc(n);
    ASSERT_NE(p, nullptr);
    void* q = am_realloc(p, 0);
    EXPECT_EQ(q, nullptr) << n;
    if (q) am_free(q);
  }
}

TEST(Api, ReallocFailureLeavesBlockIntact) {
  for (std::size_t n : {24ul, 5000ul, 100000ul, 6000000ul}) {
    void* p = am_malloc(n);
    ASSERT_NE(p, nullptr);
    amt::fill_pattern(p, n, 77 + n);
    for (std::size_t big : {kTooBig, SIZE_MAX, SIZE_MAX - 4096}) {
      errno = 0;
      void* q = am_realloc(p, opaque(big));
      EXPECT_EQ(q, nullptr) << n << " -> " << big;
      EXPECT_EQ(errno, ENOMEM);
      EXPECT_EQ(am_usable_size(p) >= n, true);
      ASSERT_EQ(amt::check_pattern(p, n, 77 + n), SIZE_MAX) << "block changed by a failed realloc";
    }
    am_free(p);
  }
}

TEST(Api, ReallocSameSizeAndShrinkKeepContents) {
  void* p = am_malloc(1000);
  ASSERT_NE(p, nullptr);
  amt::fill_pattern(p, 1000, 5);
  p = am_realloc(p, 1000);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(amt::check_pattern(p, 1000, 5), SIZE_MAX);
  p = am_realloc(p, 999);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(amt::check_pattern(p, 999, 5), SIZE_MAX);
  p = am_realloc(p, 10);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(amt::check_pattern(p, 10, 5), SIZE_MAX);
  EXPECT_GE(am_usable_size(p), 10u);
  am_free(p);
}

// ---- reallocarray -----------------------------------------------------------

TEST(Api, ReallocArray) {
  int* a = static_cast<int*>(am_reallocarray(nullptr, 10, sizeof(int)));
  ASSERT_NE(a, nullptr);
  for (int i = 0; i < 10; ++i) a[i] = i * 3;
  a = static_cast<int*>(am_reallocarray(a, 100000, sizeof(int)));
  ASSERT_NE(a, nullptr);
  EXPECT_GE(am_usable_size(a), 100000 * sizeof(int));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a[i], i * 3);
  a = static_cast<int*>(am_reallocarray(a, 5, sizeof(int)));
  ASSERT_NE(a, nullptr);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(a[i], i * 3);
  am_free(a);
}

TEST(Api, ReallocArrayOverflowKeepsOldBlock) {
  void* p = am_malloc(64);
  ASSERT_NE(p, nullptr);
  amt::fill_pattern(p, 64, 99);
  struct {
    std::size_t count, size;
  } cases[] = {{SIZE_MAX / 2 + 1, 2},
               {SIZE_MAX, SIZE_MAX},
               {1ul << 33, 1ul << 33},
               {kTooBig, 1},
               {1, kTooBig}};
  for (auto c : cases) {
    errno = 0;
    void* q = am_reallocarray(p, opaque(c.count), opaque(c.size));
    EXPECT_EQ(q, nullptr) << c.count << " x " << c.size;
    EXPECT_EQ(errno, ENOMEM) << c.count << " x " << c.size;
    ASSERT_EQ(amt::check_pattern(p, 64, 99), SIZE_MAX) << "old block changed";
  }
  // Overflow with a NULL block: NULL + ENOMEM, nothing allocated.
  errno = 0;
  EXPECT_EQ(am_reallocarray(nullptr, opaque(SIZE_MAX), 16), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  // The old block is still a valid, live block.
  p = am_realloc(p, 128);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(amt::check_pattern(p, 64, 99), SIZE_MAX);
  am_free(p);
}

// ---- memalign family --------------------------------------------------------

TEST(Api, PosixMemalignValid) {
  for (std::size_t a : {8ul, 16ul, 32ul, 64ul, 4096ul, 65536ul, 1ul << 20}) {
    for (std::size_t n : {0ul, 1ul, a - 1, a, a + 1, 3 * a}) {
      void* p = reinterpret_cast<void*>(0x1);
      errno = 1234;
      int rc = am_posix_memalign(&p, a, n);
      ASSERT_EQ(rc, 0) << "align " << a << " size " << n;
      EXPECT_EQ(errno, 1234) << "posix_memalign must not set errno on success";
      ASSERT_NE(p, nullptr);
      EXPECT_TRUE(amt::is_aligned(p, a)) << p << " align " << a;
      EXPECT_GE(am_usable_size(p), n);
      if (n) std::memset(p, 1, n);
      am_free(p);
    }
  }
}

TEST(Api, PosixMemalignInvalidAlignmentIsEinval) {
  // Not a power of two, or not a multiple of sizeof(void*), or zero.
  for (std::size_t a :
       {0ul, 1ul, 2ul, 4ul, 3ul, 12ul, 24ul, 48ul, 100ul, 4095ul, 4097ul, SIZE_MAX, SIZE_MAX - 7}) {
    void* sentinel = reinterpret_cast<void*>(0xdeadbeef);
    void* p = sentinel;
    errno = 4321;
    int rc = am_posix_memalign(&p, opaque(a), 64);
    EXPECT_EQ(rc, EINVAL) << "alignment " << a;
    EXPECT_EQ(p, sentinel) << "*out changed on error, alignment " << a;
    EXPECT_EQ(errno, 4321) << "errno changed, alignment " << a;
    if (rc == 0 && p != sentinel) am_free(p);
  }
}

TEST(Api, PosixMemalignTooBigIsEnomem) {
  for (std::size_t n : {kTooBig, SIZE_MAX, SIZE_MAX - 64}) {
    void* sentinel = reinterpret_cast<void*>(0xdeadbeef);
    void* p = sentinel;
    errno = 4321;
    int rc = am_posix_memalign(&p, 64, opaque(n));
    EXPECT_EQ(rc, ENOMEM) << n;
    EXPECT_EQ(p, sentinel) << n;
    EXPECT_EQ(errno, 4321) << n;
  }
}

TEST(Api, AlignedAllocAndMemalignValid) {
  for (std::size_t a : {1ul, 2ul, 4ul, 8ul, 16ul, 32ul, 128ul, 4096ul, 1ul << 16, 1ul << 21}) {
    for (std::size_t n : {1ul, 16ul, a, a + 16, 1000ul}) {
      void* p = am_aligned_alloc(a, n);
      ASSERT_NE(p, nullptr) << a << " " << n;
      EXPECT_TRUE(amt::is_aligned(p, a < 16 ? 16 : a)) << p << " align " << a;
      EXPECT_GE(am_usable_size(p), n);
      std::memset(p, 2, n);
      am_free(p);
      p = am_memalign(a, n);
      ASSERT_NE(p, nullptr) << a << " " << n;
      EXPECT_TRUE(amt::is_aligned(p, a < 16 ? 16 : a)) << p << " align " << a;
      EXPECT_GE(am_usable_size(p), n);
      std::memset(p, 3, n);
      am_free(p);
    }
  }
}

TEST(Api, AlignmentZeroIsTreatedAsOne) {
  void* p = am_memalign(opaque<std::size_t>(0), 100);
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(amt::is_aligned(p, 16));
  am_free(p);
  p = am_aligned_alloc(opaque<std::size_t>(0), 100);
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(amt::is_aligned(p, 16));
  am_free(p);
}

TEST(Api, AlignedAllocNonPowerOfTwoIsEinval) {
  for (std::size_t a :
       {3ul, 12ul, 24ul, 48ul, 100ul, 4095ul, 4097ul, 65535ul, SIZE_MAX, SIZE_MAX / 2}) {
    errno = 0;
    void* p = am_aligned_alloc(opaque(a), 64);
    EXPECT_EQ(p, nullptr) << "aligned_alloc alignment " << a;
    EXPECT_EQ(errno, EINVAL) << "aligned_alloc alignment " << a;
    if (p) am_free(p);
    errno = 0;
    p = am_memalign(opaque(a), 64);
    EXPECT_EQ(p, nullptr) << "memalign alignment " << a;
    EXPECT_EQ(errno, EINVAL) << "memalign alignment " << a;
    if (p) am_free(p);
  }
}

TEST(Api, AlignedAllocTooBigIsEnomem) {
  for (std::size_t a : {16ul, 64ul, 4096ul, 1ul << 20}) {
    for (std::size_t n : {kTooBig, SIZE_MAX, SIZE_MAX - a, SIZE_MAX - a + 1}) {
      errno = 0;
      void* p = am_aligned_alloc(a, opaque(n));
      EXPECT_EQ(p, nullptr) << a << " " << n;
      EXPECT_EQ(errno, ENOMEM) << a << " " << n;
      errno = 0;
      void* q = am_memalign(a, opaque(n));
      EXPECT_EQ(q, nullptr) << a << " " << n;
      EXPECT_EQ(errno, ENOMEM) << a << " " << n;
    }
  }
}

TEST(Api, AbsurdAlignmentFailsCleanly) {
  // Powers of two at least as large as the user address space (or so large
  // that alignment + size overflows): NULL, never a misaligned or undersized
  // block. 2^40 may legitimately succeed; then it must be aligned.
  for (int shift : {40, 47, 48, 56, 62, 63}) {
    std::size_t a = std::size_t{1} << shift;
    errno = 0;
    void* p = am_memalign(opaque(a), 16);
    if (shift >= 47) {
      EXPECT_EQ(p, nullptr) << "memalign(2^" << shift << ", 16)";
      EXPECT_TRUE(errno == ENOMEM || errno == EINVAL) << "errno " << errno;
    }
    if (p) {
      EXPECT_TRUE(amt::is_aligned(p, a)) << p;
      am_free(p);
    } else {
      EXPECT_TRUE(errno == ENOMEM || errno == EINVAL) << "errno " << errno;
    }
    void* q = reinterpret_cast<void*>(0x10);
    int rc = am_posix_memalign(&q, opaque(a), 16);
    if (shift >= 47) {
      EXPECT_TRUE(rc == ENOMEM || rc == EINVAL) << "posix_memalign(2^" << shift << ") -> " << rc;
    }
    if (rc == 0) {
      EXPECT_TRUE(amt::is_aligned(q, a)) << q;
      am_free(q);
    } else {
      EXPECT_EQ(q, reinterpret_cast<void*>(0x10));
    }
  }
}

// ---- valloc / pvalloc -------------------------------------------------------

TEST(Api, VallocIsPageAligned) {
  const std::size_t page = amt::page_size();
  EXPECT_EQ(page, 4096u);
  for (std::size_t n : {1ul, 100ul, 4095ul, 4096ul, 4097ul, 100000ul, 5000000ul}) {
    void* p = am_valloc(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_TRUE(amt::is_aligned(p, page)) << p;
    EXPECT_GE(am_usable_size(p), n);
    std::memset(p, 4, n);
    am_free(p);
  }
  errno = 0;
  EXPECT_EQ(am_valloc(opaque(SIZE_MAX)), nullptr);
  EXPECT_EQ(errno, ENOMEM);
}

TEST(Api, PvallocRoundsToPages) {
  const std::size_t page = amt::page_size();
  for (std::size_t n : {0ul, 1ul, 100ul, 4095ul, 4096ul, 4097ul, 12289ul, 100000ul, 5000001ul}) {
    void* p = am_pvalloc(n);
    ASSERT_NE(p, nullptr) << n;
    EXPECT_TRUE(amt::is_aligned(p, page)) << p;
    std::size_t want = amt::round_up(n, page);
    EXPECT_GE(am_usable_size(p), want) << "pvalloc(" << n << ")";
    std::memset(p, 5, want);  // the whole rounded size is ours
    am_free(p);
  }
  // Rounding SIZE_MAX up to a page overflows.
  for (std::size_t n : {SIZE_MAX, SIZE_MAX - 4094, kTooBig}) {
    errno = 0;
    void* p = am_pvalloc(opaque(n));
    EXPECT_EQ(p, nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << n;
  }
}

// ---- am_owns ----------------------------------------------------------------

int g_global_array[64];
static char g_static_buffer[4096];

TEST(Api, OwnsOurBlocks) {
  std::vector<void*> v;
  for (std::size_t n : {0ul, 1ul, 64ul, 1000ul, 30000ul, 65536ul, 100000ul, 2000000ul, 9000000ul}) {
    void* p = am_malloc(n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(am_owns(p), 1) << n;
    if (n >= 16) {
      EXPECT_EQ(am_owns(static_cast<char*>(p) + 8), 1) << "interior pointer, n=" << n;
      EXPECT_EQ(am_owns(static_cast<char*>(p) + n - 1), 1) << "last byte, n=" << n;
    }
    v.push_back(p);
  }
  void* a = am_aligned_alloc(1 << 20, 100);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(am_owns(a), 1);
  void* c = am_calloc(3, 33);
  EXPECT_EQ(am_owns(c), 1);
  am_free(a);
  am_free(c);
  for (void* p : v) am_free(p);
}

TEST(Api, DoesNotOwnForeignMemory) {
  int local = 0;
  char stack_buf[256];
  EXPECT_EQ(am_owns(&local), 0);
  EXPECT_EQ(am_owns(stack_buf + 100), 0);
  EXPECT_EQ(am_owns(g_global_array), 0);
  EXPECT_EQ(am_owns(g_static_buffer + 1000), 0);
  EXPECT_EQ(am_owns(reinterpret_cast<void*>(&am_malloc)), 0);  // code
  EXPECT_EQ(am_owns("a string literal"), 0);
  for (std::size_t n : {16ul, 1000ul, 200000ul, 5000000ul}) {
    void* g = std::malloc(n);  // the system's (or the sanitizer's) malloc
    ASSERT_NE(g, nullptr);
    EXPECT_EQ(am_owns(g), 0) << "glibc malloc(" << n << ")";
    std::free(g);
  }
  std::vector<int> vec(1000);
  EXPECT_EQ(am_owns(vec.data()), 0);
}

TEST(Api, OwnsNeverFaultsOnGarbage) {
  const std::uintptr_t values[] = {0,
                                   1,
                                   8,
                                   16,
                                   4096,
                                   0xdeadbeef,
                                   0x7fffffffffff,
                                   0x800000000000,
                                   0x7fffffffffff & ~std::uintptr_t{0xfff},
                                   0xffff800000000000,
                                   0xffffffffff600000,  // vsyscall page
                                   UINTPTR_MAX,
                                   UINTPTR_MAX - 15,
                                   std::uintptr_t{1} << 63,
                                   std::uintptr_t{1} << 47,
                                   std::uintptr_t{1} << 46,
                                   std::uintptr_t{1} << 40,
                                   std::uintptr_t{1} << 32};
  for (std::uintptr_t v : values)
    EXPECT_EQ(am_owns(reinterpret_cast<void*>(v)), 0) << std::hex << v;
  amt::Rng rng(42);
  for (int i = 0; i < 200000; ++i) {
    std::uintptr_t v = rng.next();
    if (i % 2) v &= 0x00007fffffffffff;  // user-space addresses
    if (i % 4 == 1) v &= ~std::uintptr_t{0xf};
    (void)am_owns(reinterpret_cast<void*>(v));
  }
  // Addresses near our own blocks, inside and outside any segment.
  void* p = am_malloc(100);
  ASSERT_NE(p, nullptr);
  std::uintptr_t base = reinterpret_cast<std::uintptr_t>(p);
  for (std::intptr_t d = -(std::intptr_t{64} << 20); d <= (std::intptr_t{64} << 20);
       d += 4096 * 7 + 16)
    (void)am_owns(reinterpret_cast<void*>(base + static_cast<std::uintptr_t>(d)));
  am_free(p);
  SUCCEED();
}

// ---- many functions together --------------------------------------------------

TEST(Api, MixedFamilyBlocksAreInterchangeable) {
  // Blocks from any function can be realloc'd, sized and freed by any other.
  std::vector<void*> v;
  v.push_back(am_malloc(100));
  v.push_back(am_calloc(10, 10));
  v.push_back(am_memalign(64, 100));
  v.push_back(am_aligned_alloc(4096, 100));
  v.push_back(am_valloc(100));
  v.push_back(am_pvalloc(100));
  void* pm = nullptr;
  ASSERT_EQ(am_posix_memalign(&pm, 256, 100), 0);
  v.push_back(pm);
  v.push_back(am_reallocarray(nullptr, 10, 10));
  for (std::size_t i = 0; i < v.size(); ++i) {
    ASSERT_NE(v[i], nullptr) << i;
    amt::fill_pattern(v[i], 100, i);
  }
  for (std::size_t i = 0; i < v.size(); ++i) {
    void* q = am_realloc(v[i], 5000 + i);
    ASSERT_NE(q, nullptr);
    ASSERT_EQ(amt::check_pattern(q, 100, i), SIZE_MAX) << "block " << i;
    q = am_realloc(q, 50);
    ASSERT_NE(q, nullptr);
    ASSERT_EQ(amt::check_pattern(q, 50, i), SIZE_MAX) << "block " << i;
    am_free(q);
  }
}

}  // namespace
