// The epoch collector's public C API (amalloc.h): pins, retirements,
// grace periods, quiescent-state executors and the stats report. The
// collector itself is in epoch.cpp.
#include "allocator/format.h"
#include "amalloc/amalloc.h"
#include "pools/epoch.h"

namespace am::epoch {

namespace {

// Runs `wait` with the calling executor offline, as urcu-qsbr does: a thread
// inside synchronize reads nothing. False (and a report) inside a guard.
bool unpinned_wait(const char* fn, void (*wait)()) {
  if (t_nest != t_perm || t_reclaiming) {
    misuse(fn, t_reclaiming ? "called from a deleter; returning at once"
                            : "called while pinned; returning at once");
    return false;
  }
  bool was_perm = t_perm;
  if (was_perm) {
    t_perm = t_nest = 0;
    t_rec->state.store(0, std::memory_order_release);
  }
  wait();
  if (was_perm) {
    t_perm = t_nest = 1;
    pin(t_rec);
  }
  return true;
}

}  // namespace

void stats_hook(int fd, bool json) {
  am_epoch_stats_t s;
  am_epoch_stats(&s);
  if (s.threads == 0 && s.retired == 0) return;
  Out o;
  if (json) {
    o.str(",\"epoch\":{\"epoch\":")
        .num(s.epoch)
        .str(",\"threads\":")
        .num(s.threads)
        .str(",\"retired\":")
        .num(s.retired)
        .str(",\"reclaimed\":")
        .num(s.reclaimed)
        .str(",\"pending\":")
        .num(s.pending)
        .str(",\"pending_bytes\":")
        .num(s.pending_bytes)
        .str(",\"advances\":")
        .num(s.advances)
        .str(",\"failed_advances\":")
        .num(s.failed_advances)
        .str(",\"stall_warnings\":")
        .num(s.stall_warnings)
        .ch('}');
  } else {
    o.str("  epochs:     epoch ")
        .num(s.epoch)
        .str(", ")
        .num(s.threads)
        .str(" threads, ")
        .num(s.retired)
        .str(" retired, ")
        .num(s.pending)
        .str(" pending (")
        .bytes(s.pending_bytes)
        .str("), ")
        .num(s.advances)
        .str(" advances, ")
        .num(s.failed_advances)
        .str(" waits on a pinned thread\n");
  }
  o.flush(fd);
}

}  // namespace am::epoch

using namespace am::epoch;

extern "C" {

void am_epoch_pin_slow_(void) {
  Record* r = t_rec;
  if (!r) r = register_thread();
  pin(r);
}

void am_epoch_unpin_slow_(void) { leave(); }

void am_epoch_enter(void) { enter(); }
void am_epoch_exit(void) { leave(); }

void am_retire(void* p) { retire("am_retire", p, nullptr, nullptr, true); }

void am_retire_fn(void* p, void (*fn)(void* p, void* ctx), void* ctx) {
  retire("am_retire_fn", p, fn, ctx, true);
}

void am_epoch_defer(void* p, void (*fn)(void* p, void* ctx), void* ctx) {
  if (fn == nullptr) return misuse("am_epoch_defer", "no function given; ignored");
  retire("am_epoch_defer", p, fn, ctx, false);
}

void am_epoch_defer_free(void* p, void (*fn)(void* p, void* ctx), void* ctx) {
  if (fn == nullptr) return misuse("am_epoch_defer_free", "no function given; ignored");
  retire("am_epoch_defer_free", p, fn, ctx, false, true);
}

void am_epoch_synchronize(void) {
  if (!t_rec) register_thread();
  unpinned_wait("am_epoch_synchronize", wait_grace_period);
}

void am_epoch_barrier(void) {
  if (!t_rec) register_thread();
  unpinned_wait("am_epoch_barrier", wait_all_reclaimed);
}

void am_epoch_executor_register(void) {
  Record* r = t_rec;
  if (!r) r = register_thread();
  if (t_exec) return;
  t_exec = 1;
  t_offline = 0;
  t_perm = 1;
  if (t_nest++ == 0) pin(r);  // inside a guard, the guard's older pin stands
}

void am_epoch_executor_unregister(void) {
  if (!t_exec) return;
  if (t_perm && --t_nest == 0) t_rec->state.store(0, std::memory_order_release);
  t_exec = t_offline = t_perm = 0;
}

void am_epoch_offline(void) {
  if (!t_exec || t_offline) return;
  if (t_nest != 1) return misuse("am_epoch_offline", "called while pinned by a guard; ignored");
  t_offline = 1;
  t_perm = t_nest = 0;
  t_rec->state.store(0, std::memory_order_release);
}

void am_epoch_online(void) {
  if (!t_exec || !t_offline) return;
  t_offline = 0;
  t_perm = 1;
  if (t_nest++ == 0) pin(t_rec);
}

void am_epoch_stats(am_epoch_stats_t* out) { collector_stats(out); }

}  // extern "C"
