// liburcu's membarrier flavour (urcu-memb) in the epoch benchmarks: inline
// read_lock/unlock (_LGPL_SOURCE), call_rcu with the rcu_head in the node.
#define _LGPL_SOURCE 1
#include <urcu/urcu-memb.h>

#include "epoch_bench.h"

namespace {

using epb::Node;

void free_node(rcu_head* h) { am_free(epb::node_from_rcu(h)); }

struct UrcuMemb {
  static void thread_init() { urcu_memb_register_thread(); }
  static void thread_fini() { urcu_memb_unregister_thread(); }
  static void read_lock() { urcu_memb_read_lock(); }
  static void read_unlock() { urcu_memb_read_unlock(); }
  static void quiescent() {}
  static void retire(Node* n) {
    urcu_memb_call_rcu(reinterpret_cast<rcu_head*>(n->rcu), free_node);
  }
  static void barrier() { urcu_memb_barrier(); }
};
static_assert(sizeof(rcu_head) <= sizeof(Node::rcu));

}  // namespace

EPB_PIN_BENCHMARKS("urcu_memb", UrcuMemb);
EPB_RETIRE_BENCHMARKS("urcu_memb_call_rcu", UrcuMemb);
EPB_MAP_BENCHMARKS("urcu_memb_call_rcu", UrcuMemb);
