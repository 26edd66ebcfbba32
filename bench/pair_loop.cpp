// am_pair_loop: the smallest possible malloc/free loop, for counting the
// instructions an allocator spends per malloc+free pair.
//
//   am_pair_loop PATTERN SIZE ITERS
//
//   alt      ITERS times: p = malloc(SIZE); free(p);
//   batch64  64 blocks malloc'ed, then all 64 freed (in allocation order);
//            ITERS counts pairs, so ITERS/64 rounds (a last partial round
//            makes the total exactly ITERS pairs).
//
// The program links only libc/libstdc++ (never amalloc): the allocator under
// test is chosen at run time with LD_PRELOAD, so every allocator runs the very
// same machine code. scripts/count-instructions runs it under callgrind at two
// values of ITERS and divides the difference of the totals by the difference
// of ITERS, which cancels start-up and exit.
//
// The calls go straight to malloc/free through the PLT (as in any program).
// Built with -fno-builtin-malloc/-free so the compiler knows nothing about
// them, and the pointer passes through an empty asm with a memory clobber, so
// no call can be elided, merged or hoisted. The loop itself adds a few
// instructions per pair (counter, compare, branch, argument set-up), the same
// for every allocator.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

inline void keep(void* p) {
  asm volatile("" : : "r"(p) : "memory");
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: am_pair_loop alt|batch64 SIZE ITERS\n"
               "  alt      ITERS x { p = malloc(SIZE); free(p); }\n"
               "  batch64  ITERS/64 x { 64 x malloc(SIZE); free all 64 }\n");
  std::exit(2);
}

unsigned long long parse(const char* s) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') usage();
  return v;
}

__attribute__((noinline)) void run_alt(size_t size, unsigned long long iters) {
  for (unsigned long long i = 0; i < iters; ++i) {
    void* p = std::malloc(size);
    keep(p);
    std::free(p);
  }
}

__attribute__((noinline)) void run_batch(size_t size, unsigned long long iters) {
  constexpr unsigned kBatch = 64;
  void* blocks[kBatch];
  unsigned long long done = 0;
  while (done < iters) {
    unsigned n = (iters - done >= kBatch) ? kBatch : unsigned(iters - done);
    for (unsigned j = 0; j < n; ++j) {
      blocks[j] = std::malloc(size);
      keep(blocks[j]);
    }
    for (unsigned j = 0; j < n; ++j) std::free(blocks[j]);
    keep(blocks);
    done += n;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) usage();
  const char* pattern = argv[1];
  size_t size = size_t(parse(argv[2]));
  unsigned long long iters = parse(argv[3]);

  // One block outside the measured loop: the allocator's lazy initialisation
  // (and its thread heap) happens here in both runs, whatever ITERS is.
  void* warm = std::malloc(size);
  if (warm == nullptr) {
    std::fprintf(stderr, "am_pair_loop: malloc(%zu) failed\n", size);
    return 1;
  }
  keep(warm);
  std::free(warm);

  if (std::strcmp(pattern, "alt") == 0) {
    run_alt(size, iters);
  } else if (std::strcmp(pattern, "batch64") == 0) {
    run_batch(size, iters);
  } else {
    usage();
  }
  return 0;
}
