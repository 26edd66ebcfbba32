// liburcu's quiescent-state flavour (urcu-qsbr) in the epoch benchmarks:
// read-side sections cost nothing, each thread announces a quiescent state
// every kQuiescentEvery operations; call_rcu with the rcu_head in the node.
#define _LGPL_SOURCE 1
#include <urcu/urcu-qsbr.h>

#include "epoch_bench.h"

namespace {

using epb::Node;

void free_node(rcu_head* h) { am_free(epb::node_from_rcu(h)); }

struct UrcuQsbr {
  static void thread_init() { urcu_qsbr_register_thread(); }
  static void thread_fini() { urcu_qsbr_unregister_thread(); }
  static void read_lock() { urcu_qsbr_read_lock(); }
  static void read_unlock() { urcu_qsbr_read_unlock(); }
  static void quiescent() { urcu_qsbr_quiescent_state(); }
  static void retire(Node* n) {
    urcu_qsbr_call_rcu(reinterpret_cast<rcu_head*>(n->rcu), free_node);
  }
  static void barrier() { urcu_qsbr_barrier(); }
};
static_assert(sizeof(rcu_head) <= sizeof(Node::rcu));

}  // namespace

EPB_PIN_BENCHMARKS("urcu_qsbr", UrcuQsbr);
BENCHMARK(epb::quiescent_point<UrcuQsbr>)->Name("QuiescentPoint/urcu_qsbr_quiescent_state");
EPB_RETIRE_BENCHMARKS("urcu_qsbr_call_rcu", UrcuQsbr);
EPB_MAP_BENCHMARKS("urcu_qsbr_call_rcu", UrcuQsbr);
