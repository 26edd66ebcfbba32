// main() of the unit tests: either runs one scenario in this fresh process
// (`--amalloc-scenario=NAME`, used by tests that need other AMALLOC_*
// options, which are read once per process), or runs GoogleTest.
#include <gtest/gtest.h>

#include <cstdlib>

#include "amalloc_test_support.h"

namespace {

// Bad frees are counted for the whole process: a test that makes one on
// purpose must not fail the tests after it when they all run in one
// process (ctest runs each alone).
struct BadFreeBaseline : ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo&) override { amt::mark_bad_frees(); }
};

}  // namespace

int main(int argc, char** argv) {
  int code = 0;
  if (amt::maybe_run_scenario(argc, argv, &code)) return code;
  // The death tests expect the default bad-free policy (abort); their
  // children are fresh processes started from this environment.
  unsetenv("AMALLOC_BAD_FREE");
  ::testing::InitGoogleTest(&argc, argv);
  // amalloc may run a background thread: fork-only death tests would warn
  // and could deadlock; "threadsafe" re-executes this program instead.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ::testing::UnitTest::GetInstance()->listeners().Append(new BadFreeBaseline);
  return RUN_ALL_TESTS();
}
