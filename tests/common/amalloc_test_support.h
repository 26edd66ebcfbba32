// Helpers shared by the unit and stress tests of amalloc_core (the am_* API).
//
// Nothing here replaces malloc: the test programs themselves run on the
// system allocator (or the sanitizer's), and only memory from am_* comes
// from amalloc. That is what lets these tests run under ASan/UBSan and TSan.
#ifndef AMALLOC_TESTS_COMMON_AMALLOC_TEST_SUPPORT_H
#define AMALLOC_TESTS_COMMON_AMALLOC_TEST_SUPPORT_H

#include <amalloc/amalloc.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

// ---- sanitizer detection -------------------------------------------------

#if defined(__SANITIZE_ADDRESS__)
#define AMT_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define AMT_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(AMT_ASAN)
#define AMT_ASAN 1
#endif
#if __has_feature(thread_sanitizer) && !defined(AMT_TSAN)
#define AMT_TSAN 1
#endif
#endif
#ifndef AMT_ASAN
#define AMT_ASAN 0
#endif
#ifndef AMT_TSAN
#define AMT_TSAN 0
#endif
// UBSan alone is cheap; the tests CMakeLists defines AMT_UBSAN when the
// build uses -fsanitize=undefined (there is no __has_feature for it).
#ifndef AMT_UBSAN
#define AMT_UBSAN 0
#endif
#define AMT_SANITIZED (AMT_ASAN || AMT_TSAN)

namespace amt {

// How much work the long tests do, relative to the normal build: 1.0 in a
// normal build, smaller under sanitizers. AMALLOC_TEST_SCALE (a positive
// number, e.g. 0.1 or 4) overrides it.
double scale();
// n * scale(), at least `minimum`.
std::size_t scaled(std::size_t n, std::size_t minimum = 1);

// ---- byte patterns --------------------------------------------------------

// A pattern that depends on the seed and on the offset: byte j of the block
// is a byte of word j/8, so any prefix can be checked after a realloc.
void fill_pattern(void* p, std::size_t n, std::uint64_t seed);
// Offset of the first byte in [0, n) that differs from the pattern, or
// SIZE_MAX when all match.
std::size_t check_pattern(const void* p, std::size_t n, std::uint64_t seed);
// The same for one repeated byte value.
std::size_t check_bytes(const void* p, std::size_t n, unsigned char value);

std::uint64_t mix64(std::uint64_t x);

// A small fast PRNG (xorshift64*), deterministic per seed.
struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(mix64(seed) | 1) {}
  std::uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1DULL;
  }
  // Uniform in [0, n).
  std::uint64_t below(std::uint64_t n) { return n ? next() % n : 0; }
  // Uniform in [lo, hi].
  std::uint64_t range(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }
  bool chance(unsigned percent) { return below(100) < percent; }
};

// ---- process facts -------------------------------------------------------

// Resident set size of this process in bytes (from /proc/self/statm).
std::size_t rss_bytes();
// KiB of [p, p + bytes) resident (mincore; p page-aligned), SIZE_MAX on error.
std::size_t resident_kib(const void* p, std::size_t bytes);
// The value printed as "KEY value" at the start of a line of `out`, or -1.
long long value_of(const std::string& out, const std::string& key);
std::size_t page_size();
am_stats_t stats();
// Bad frees counted since the last mark (the unit tests mark at the start
// of every test).
void mark_bad_frees();
std::uint64_t bad_frees_since_mark();

inline bool is_aligned(const void* p, std::size_t a) {
  return (reinterpret_cast<std::uintptr_t>(p) & (a - 1)) == 0;
}
inline std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// Runs `fn` with file descriptor 2 sent to a temporary file; returns what
// was written there.
std::string capture_stderr(const std::function<void()>& fn);

// ---- running this test program again -------------------------------------

// Options are read from the environment once per process, so a test that
// needs other options runs a scenario in a fresh copy of this program
// (/proc/self/exe --amalloc-scenario=NAME) with extra environment variables
// (an empty value removes the variable from the child's environment).
struct ChildResult {
  int wait_status = -1;  // as from waitpid
  std::string out;       // the child's stdout
  std::string err;       // the child's stderr
  bool exited_ok() const;
  std::string describe() const;
};
ChildResult run_scenario(const std::string& name,
                         const std::vector<std::pair<std::string, std::string>>& env,
                         int timeout_seconds = 120);

using ScenarioFn = int (*)();
std::map<std::string, ScenarioFn>& scenarios();
struct ScenarioRegistrar {
  ScenarioRegistrar(const char* name, ScenarioFn fn) { scenarios()[name] = fn; }
};
// If argv asks for a scenario, runs it and returns true with its exit code.
bool maybe_run_scenario(int argc, char** argv, int* exit_code);

// Every 0x... number in `text`.
std::vector<std::uintptr_t> hex_numbers(const std::string& text);
// The lines of `text` that contain `needle`.
std::vector<std::string> lines_containing(const std::string& text, const std::string& needle);

}  // namespace amt

#define AMT_SCENARIO_CAT2(a, b) a##b
#define AMT_SCENARIO_CAT(a, b) AMT_SCENARIO_CAT2(a, b)
// Defines `int scenario_NAME()`, run by `this_program --amalloc-scenario=NAME`.
#define AMT_SCENARIO(NAME)                                                                     \
  static int scenario_##NAME();                                                                \
  static ::amt::ScenarioRegistrar AMT_SCENARIO_CAT(amt_scenario_reg_, NAME)(#NAME,             \
                                                                            &scenario_##NAME); \
  static int scenario_##NAME()

#endif
