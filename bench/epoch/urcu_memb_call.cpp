// urcu-memb's read_lock/unlock as library calls (without _LGPL_SOURCE), as
// amalloc's am_epoch_enter/exit are: the same kind of call.
#include <urcu/urcu-memb.h>

#include "epoch_bench.h"

namespace {

struct UrcuMembCall {
  static void thread_init() { urcu_memb_register_thread(); }
  static void thread_fini() { urcu_memb_unregister_thread(); }
  static void read_lock() { urcu_memb_read_lock(); }
  static void read_unlock() { urcu_memb_read_unlock(); }
};

}  // namespace

EPB_PIN_BENCHMARKS("urcu_memb_libcall", UrcuMembCall);
