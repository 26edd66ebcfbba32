// am_bench_epoch: amalloc's epoch collector against liburcu (memb and qsbr
// flavours, when found at build time) and a leak-everything baseline:
//
//   PinUnpin/*        one read-side section (pin + unpin), ns_per_section
//   QuiescentPoint/*  one quiescent-state announcement (executor idle point)
//   RetireReclaim/*   retire 100,000 nodes then wait for all to be reclaimed
//                     (the barrier is timed), ns_per_retire
//   Map/*             a read-mostly hash map (32,768 keys) on one thread and
//                     on every hardware thread: updates_per_mille 10 (99/1)
//                     or 100 (90/10), items_per_second = operations of all
//                     threads
//
// bench/epoch/report.py runs it several times and prints medians, ranges and
// the targets.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <string>

#include "epoch_bench.h"

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("epoch_bench_threads", std::to_string(epb::bench_threads()));
#ifdef EPB_HAVE_URCU
  benchmark::AddCustomContext("liburcu", "memb, qsbr");
#else
  benchmark::AddCustomContext("liburcu", "not found at build time");
#endif
  std::fprintf(stderr,
               "am_bench_epoch: concurrent benchmarks run %d threads (one per hardware thread)\n",
               epb::bench_threads());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
