// libFuzzer target for the am_* API (amalloc_core; no malloc override).
//
// The input is a sequence of operations on 64 slots. Each operation takes
// 5 bytes: opcode, slot, two size bytes, one extra byte (alignment or
// count). Every live block is kept filled with a byte derived from its slot
// and a generation number; the fill and the alignment are checked before
// every realloc and free (in windows for blocks above 64 KiB), and all
// blocks are freed at the end. Any broken
// promise of the API contract aborts with a message.
//
//   build:  cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang \
//             -DCMAKE_CXX_COMPILER=clang++ -DAMALLOC_FUZZ=ON \
//             -DAMALLOC_SANITIZE=address,undefined
//           cmake --build build-fuzz --target amalloc_fuzz
//   run:    build-fuzz/tests/amalloc_fuzz -max_total_time=60 \
//             -rss_limit_mb=4096 /tmp/corpus tests/fuzz/corpus
#include <amalloc/amalloc.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int kSlots = 64;
constexpr std::size_t kMaxLive = 192u << 20;  // bytes live at once, at most
constexpr std::size_t kTooBig = static_cast<std::size_t>(PTRDIFF_MAX) + 1;

struct Slot {
  unsigned char* p;
  std::size_t n;      // requested size
  std::size_t align;  // alignment promised
  unsigned gen;
};

Slot g_slots[kSlots];
std::size_t g_live;
unsigned g_gen;

#define FUZZ_CHECK(cond, ...)                                          \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "amalloc_fuzz: check failed: %s: ", #cond); \
      std::fprintf(stderr, __VA_ARGS__);                               \
      std::fprintf(stderr, "\n");                                      \
      std::abort();                                                    \
    }                                                                  \
  } while (0)

unsigned char fill_byte(int slot, unsigned gen) {
  return static_cast<unsigned char>(slot * 37 + gen * 11 + 1);
}

bool all_bytes(const unsigned char* p, std::size_t n, unsigned char v);

// Blocks above 64 KiB are filled and checked in windows: the first and the
// last 4 KiB, and 64 bytes at every 64 KiB. Touching every page of every
// large block would make the fuzzer spend its time in page faults; the
// windows still catch a block handed out twice, a moved block that lost
// data, and a realloc that dropped the tail.
constexpr std::size_t kWholeMax = 65536;

template <class Fn>
bool for_each_window(std::size_t n, std::size_t limit, Fn fn) {
  auto clip = [&](std::size_t off, std::size_t len) {
    if (off >= limit) return true;
    if (off + len > limit) len = limit - off;
    return fn(off, len);
  };
  if (n <= kWholeMax) return clip(0, n);
  if (!clip(0, 4096)) return false;
  for (std::size_t off = 65536; off + 64 <= n - 4096; off += 65536)
    if (!clip(off, 64)) return false;
  return clip(n - 4096, 4096);
}

// The fill of a block of n bytes, checked over its first `limit` bytes.
bool check_fill(const unsigned char* p, std::size_t n, std::size_t limit, unsigned char v) {
  return for_each_window(
      n, limit, [&](std::size_t off, std::size_t len) { return all_bytes(p + off, len, v); });
}

void do_fill(unsigned char* p, std::size_t n, unsigned char v) {
  for_each_window(n, n, [&](std::size_t off, std::size_t len) {
    std::memset(p + off, v, len);
    return true;
  });
}

bool all_bytes(const unsigned char* p, std::size_t n, unsigned char v) {
  std::uint64_t want;
  std::memset(&want, v, 8);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w != want) return false;
  }
  for (; i < n; ++i)
    if (p[i] != v) return false;
  return true;
}

void check_slot(int i, const char* when) {
  const Slot& s = g_slots[i];
  if (!s.p) return;
  FUZZ_CHECK((reinterpret_cast<std::uintptr_t>(s.p) & (s.align - 1)) == 0,
             "%s: slot %d block %p align %zu", when, i, static_cast<void*>(s.p), s.align);
  FUZZ_CHECK(am_usable_size(s.p) >= s.n, "%s: slot %d usable %zu < %zu", when, i,
             am_usable_size(s.p), s.n);
  FUZZ_CHECK(am_owns(s.p) == 1, "%s: slot %d not owned", when, i);
  FUZZ_CHECK(check_fill(s.p, s.n, s.n, fill_byte(i, s.gen)),
             "%s: slot %d (%p, %zu bytes) corrupted", when, i, static_cast<void*>(s.p), s.n);
}

void set_slot(int i, void* p, std::size_t n, std::size_t align) {
  Slot& s = g_slots[i];
  s.p = static_cast<unsigned char*>(p);
  s.n = n;
  s.align = align < 16 ? 16 : align;
  s.gen = ++g_gen;
  g_live += n;
  FUZZ_CHECK((reinterpret_cast<std::uintptr_t>(p) & (s.align - 1)) == 0,
             "new block %p for slot %d: align %zu", p, i, s.align);
  FUZZ_CHECK(am_usable_size(p) >= n, "new block %p: usable %zu < %zu", p, am_usable_size(p), n);
  FUZZ_CHECK(am_owns(p) == 1, "new block %p not owned", p);
}

void fill_slot(int i) {
  Slot& s = g_slots[i];
  if (s.p) do_fill(s.p, s.n, fill_byte(i, s.gen));
}

void free_slot(int i, bool sized) {
  Slot& s = g_slots[i];
  if (!s.p) return;
  check_slot(i, "before free");
  if (sized)
    am_free_sized(s.p, s.n);
  else
    am_free(s.p);
  g_live -= s.n;
  s.p = nullptr;
  s.n = 0;
}

// Sizes: small, medium, large, and (class 3) huge or impossible.
std::size_t decode_size(unsigned char a, unsigned char b, bool* impossible) {
  unsigned cls = a >> 6;
  std::size_t v = (static_cast<std::size_t>(a & 63) << 8) | b;  // 0..16383
  *impossible = false;
  switch (cls) {
    case 0:
      return v % 1025;
    case 1:
      return v * 4 + (v & 3);  // up to 64 KiB
    case 2:
      return 65536 + v * 64;  // up to ~1 MiB
    default:
      if (v < 48) {
        *impossible = true;
        static const std::size_t edges[] = {SIZE_MAX,
                                            kTooBig,
                                            SIZE_MAX - 4096,
                                            SIZE_MAX - 15,
                                            static_cast<std::size_t>(PTRDIFF_MAX),
                                            kTooBig + 4096};
        return edges[v % 6];
      }
      return (4u << 20) + (v % 64) * (64u << 10) + (v & 15);  // 4..8 MiB
  }
}

std::size_t decode_align(unsigned char c, bool* invalid) {
  *invalid = false;
  if (c == 0xFF) return 0;                     // treated as 1 by memalign / aligned_alloc
  std::size_t a = std::size_t{1} << (c % 22);  // 1 .. 2 MiB
  if (c & 0x80) {
    a += 3 * ((c >> 5) & 3) + 1;  // not a power of two, or odd
    if (a > 1 && (a & (a - 1)) == 0) a += 3;
    *invalid = true;
  }
  return a;
}

bool pow2(std::size_t a) {
  return a && (a & (a - 1)) == 0;
}

void op_alloc(int op, int i, std::size_t n, bool impossible, unsigned char extra) {
  free_slot(i, false);
  if (!impossible && g_live + n > kMaxLive) n %= 4096;
  void* p = nullptr;
  std::size_t align = 16;
  bool invalid = false;
  errno = 0;
  switch (op) {
    case 0:
      p = am_malloc(n);
      break;
    case 1: {
      std::size_t count = 1 + (extra & 15);
      std::size_t each = impossible ? n : n / count;
      p = am_calloc(count, each);
      if (!impossible) n = count * each;
      if (p)
        FUZZ_CHECK(check_fill(static_cast<unsigned char*>(p), n, n, 0), "calloc(%zu, %zu) not zero",
                   count, each);
      break;
    }
    case 3:
    case 4:
    case 5: {
      align = decode_align(extra, &invalid);
      if (op == 3) {
        p = am_memalign(align, n);
      } else if (op == 5) {
        p = am_aligned_alloc(align, n);
      } else {
        void* out = reinterpret_cast<void*>(0x1234);
        int saved = errno = 777;
        int rc = am_posix_memalign(&out, align, n);
        FUZZ_CHECK(errno == saved, "posix_memalign changed errno");
        bool bad_align = !pow2(align) || align % sizeof(void*) != 0;
        if (bad_align) {
          // Both wrong: either error will do.
          FUZZ_CHECK((rc == EINVAL || (impossible && rc == ENOMEM)) &&
                         out == reinterpret_cast<void*>(0x1234),
                     "posix_memalign(%zu) -> %d", align, rc);
          return;
        }
        if (impossible) {
          FUZZ_CHECK(rc == ENOMEM && out == reinterpret_cast<void*>(0x1234),
                     "posix_memalign(%zu, %zu) -> %d", align, n, rc);
          return;
        }
        FUZZ_CHECK(rc == 0, "posix_memalign(%zu, %zu) failed: %d", align, n, rc);
        p = out;
        break;
      }
      if (invalid) {
        FUZZ_CHECK(p == nullptr && (errno == EINVAL || (impossible && errno == ENOMEM)),
                   "alignment %zu: %p errno %d (op %d)", align, p, errno, op);
        return;
      }
      if (align == 0) align = 1;
      break;
    }
    case 10:
      if (extra & 1) {
        p = am_pvalloc(n);
        if (p && !impossible) n = (n + 4095) & ~std::size_t{4095};
      } else {
        p = am_valloc(n);
      }
      align = 4096;
      break;
  }
  if (impossible) {
    FUZZ_CHECK(p == nullptr && errno == ENOMEM, "impossible size %zu: %p errno %d (op %d)", n, p,
               errno, op);
    return;
  }
  FUZZ_CHECK(p != nullptr, "allocation of %zu bytes failed (op %d, errno %d)", n, op, errno);
  set_slot(i, p, n, align);
  fill_slot(i);
}

void op_realloc(int i, std::size_t n, bool impossible, bool array, unsigned char extra) {
  Slot& s = g_slots[i];
  check_slot(i, "before realloc");
  if (!impossible && g_live + n > kMaxLive) n %= 4096;
  errno = 0;
  void* q;
  std::size_t count = 1, each = n;
  if (array) {
    count = 1 + (extra & 7);
    each = impossible ? SIZE_MAX / 2 + (extra & 3) : n / count;
    if (!impossible) n = count * each;
    q = am_reallocarray(s.p, count, each);
  } else {
    q = am_realloc(s.p, n);
  }
  if (impossible) {
    FUZZ_CHECK(q == nullptr && errno == ENOMEM, "realloc to impossible size: %p errno %d", q,
               errno);
    check_slot(i, "after failed realloc");  // the old block is intact
    return;
  }
  if (n == 0 && s.p) {  // glibc 2.36: realloc(p, 0) frees p and returns NULL
    FUZZ_CHECK(q == nullptr, "realloc(p, 0) returned %p", q);
    g_live -= s.n;
    s.p = nullptr;
    s.n = 0;
    return;
  }
  FUZZ_CHECK(q != nullptr, "realloc to %zu failed", n);
  std::size_t keep = s.n < n ? s.n : n;
  FUZZ_CHECK(check_fill(static_cast<unsigned char*>(q), s.n, keep, fill_byte(i, s.gen)),
             "realloc %zu -> %zu lost data", s.n, n);
  g_live -= s.n;
  set_slot(i, q, n, 16);
  fill_slot(i);
}

void free_all() {
  for (int i = 0; i < kSlots; ++i) free_slot(i, i & 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  g_live = 0;
  for (std::size_t at = 0; at + 5 <= size; at += 5) {
    const std::uint8_t* d = data + at;
    int op = d[0] % 12;
    int i = d[1] % kSlots;
    bool impossible = false;
    std::size_t n = decode_size(d[2], d[3], &impossible);
    unsigned char extra = d[4];
    switch (op) {
      case 0:
      case 1:
      case 3:
      case 4:
      case 5:
      case 10:
        op_alloc(op, i, n, impossible, extra);
        break;
      case 2:
        op_realloc(i, n, impossible, false, extra);
        break;
      case 8:
        op_realloc(i, n, impossible, true, extra);
        break;
      case 6:
        free_slot(i, false);
        break;
      case 9:
        free_slot(i, true);
        break;
      case 7:
        check_slot(i, "check");
        break;
      case 11: {
        // am_owns never faults, whatever the pointer.
        std::uintptr_t v = (std::uintptr_t{d[2]} << 40) | (std::uintptr_t{d[3]} << 24) |
                           (std::uintptr_t{d[4]} << 8) | static_cast<std::uintptr_t>(d[1]);
        if (g_slots[i].p && (extra & 1))
          v = reinterpret_cast<std::uintptr_t>(g_slots[i].p) + (v & 0xffff);
        (void)am_owns(reinterpret_cast<void*>(v));
        break;
      }
    }
  }
  free_all();
  return 0;
}
