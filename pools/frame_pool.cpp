#include "pools/frame_pool.h"

#include <pthread.h>

#include <cstring>
#include <new>

#include "allocator/alloc_inline.h"
#include "allocator/config.h"
#include "allocator/format.h"
#include "allocator/lock.h"
#include "allocator/stats.h"
#include "amalloc/amalloc.h"

namespace am::frames {

__thread FrameCache* t_frames __attribute__((tls_model("initial-exec")));

namespace {
FrameCache* g_all;  // every cache ever made (never freed), under g_lock
}  // namespace

namespace {

__thread bool t_frames_dead __attribute__((tls_model("initial-exec")));

pthread_key_t g_key;
pthread_once_t g_once = PTHREAD_ONCE_INIT;
FrameCache* g_free;  // caches of exited threads, for reuse

constexpr uint32_t kInitialCap = 64;
constexpr uint32_t kMinCap = 16;
constexpr uint32_t kMaxCap = 4096;

Trailer* trailer(void* p, size_t rounded) {
  return reinterpret_cast<Trailer*>(static_cast<char*>(p) + rounded);
}

void stats_hook(int fd, bool json);
void thread_exit(void* v);

void make_key() {
  pthread_key_create(&g_key, thread_exit);
  stats_add_hook(stats_hook);
}

// At start-up as well as on first use (see heap_start).
__attribute__((constructor(102))) void frames_start() { pthread_once(&g_once, make_key); }

// The calling thread's cache, made on first use; nullptr while the thread
// is exiting (its frames then bypass the pools).
FrameCache* cache() {
  FrameCache* c = t_frames;
  if (__builtin_expect(c != nullptr, 1) || t_frames_dead) return c;
  pthread_once(&g_once, make_key);
  {
    LockGuard g;
    if ((c = g_free) != nullptr) g_free = c->next_free;
  }
  if (!c) {
    void* mem = internal_malloc(sizeof(FrameCache));
    if (!mem) return nullptr;
    c = new (mem) FrameCache{};
    for (Pool& p : c->pools) p.cap = kInitialCap;
    LockGuard g;
    c->next_all = g_all;
    g_all = c;
  }
  c->live.store(1, std::memory_order_release);
  t_frames = c;
  pthread_setspecific(g_key, c);
  return c;
}

void pool_put(Pool& pl, Node* n) {
  if (pl.count >= pl.cap) {
    am_free(n);
    return;
  }
  n->next = pl.head;
  pl.head = n;
  pl.count++;
}

void free_chain(Node* n) {
  while (n) {
    Node* next = n->next;
    am_free(n);
    n = next;
  }
}

// Send one outgoing batch home: one CAS for the whole list.
void flush(FrameCache* c, Outgoing& o) {
  if (o.count == 0) return;
  FrameCache* owner = o.owner;
  if (!owner->live.load(std::memory_order_acquire)) {
    free_chain(o.first);  // its thread is gone: back to amalloc instead
  } else {
    Node* head = owner->incoming.load(std::memory_order_relaxed);
    do {
      o.last->next = head;
    } while (!owner->incoming.compare_exchange_weak(head, o.first, std::memory_order_acq_rel,
                                                    std::memory_order_relaxed));
    // Its thread may have exited between the check and the push, after its
    // last drain (thread_exit's exchange is ordered before or after this
    // CAS): then nobody takes them; give them back to amalloc.
    if (!owner->live.load(std::memory_order_acquire))
      free_chain(owner->incoming.exchange(nullptr, std::memory_order_acquire));
  }
  c->out_pending -= o.count;
  o = Outgoing{};
}

void flush_all(FrameCache* c) {
  for (Outgoing& o : c->out) flush(c, o);
}

// Take the frames other threads sent home into the pools. (acq_rel: at
// thread exit, live = 0 must be visible to a sender whose CAS follows.)
void drain(FrameCache* c) {
  Node* n = c->incoming.exchange(nullptr, std::memory_order_acq_rel);
  while (n) {
    Node* next = n->next;
    pool_put(c->pools[n->cls], n);
    n = next;
  }
}

void send_home(FrameCache* c, FrameCache* owner, Node* n) {
  // Direct-mapped by owner: a consumer that frees for a few producers keeps
  // one batch per producer.
  Outgoing& o = c->out[(reinterpret_cast<uintptr_t>(owner) >> 6) % kOutgoing];
  if (o.owner != owner) {
    flush(c, o);
    o.owner = owner;
  }
  n->next = o.first;
  o.first = n;
  if (!o.last) o.last = n;
  o.count++;
  c->out_pending++;
  if (o.count >= kBatch) flush(c, o);
}

// At each tick, a pool that did not miss since the last one and handed
// out fewer frames than half of those it holds halves its capacity (down to
// kMinCap) and keeps at most half of it: an idle pool decays to a few
// frames within log2(kMaxCap / kMinCap) ticks, a busy one keeps its size,
// and one that shrank too far grows again on the miss path
// (frame_alloc_slow).
void adapt(FrameCache* c) {
  for (Pool& pl : c->pools) {
    uint64_t used = pl.hits - pl.hits_at_adapt;
    if (pl.misses_since_adapt == 0 && pl.count > kMinCap / 4 && used < pl.count / 2) {
      if (pl.cap > kMinCap) pl.cap /= 2;
      while (pl.count > pl.cap / 2) {
        Node* n = pl.head;
        pl.head = n->next;
        pl.count--;
        am_free(n);
      }
    }
    pl.misses_since_adapt = 0;
    pl.hits_at_adapt = pl.hits;
  }
}

void thread_exit(void* v) {
  auto* c = static_cast<FrameCache*>(v);
  t_frames = nullptr;
  t_frames_dead = true;
  flush_all(c);
  c->live.store(0, std::memory_order_release);
  drain(c);
  for (Pool& pl : c->pools) {
    free_chain(pl.head);
    pl.head = nullptr;
    pl.count = 0;
    pl.cap = kInitialCap;
  }
  LockGuard g;
  c->next_free = g_free;
  g_free = c;
}

AM_APPROXIMATE_READS void stats_hook(int fd, bool json) {
  // Sum over every cache; sizes with no traffic are left out.
  struct Row {
    uint64_t hits, misses, remote, pooled;
  };
  static Row rows[kClasses];  // under g_lock
  LockGuard g;
  memset(rows, 0, sizeof rows);
  for (FrameCache* c = g_all; c; c = c->next_all)
    for (unsigned i = 0; i < kClasses; i++) {
      const Pool& p = c->pools[i];
      rows[i].hits += p.hits;
      rows[i].misses += p.misses;
      rows[i].remote += p.remote_frees;
      rows[i].pooled += p.count;
    }
  Out o;
  bool first = true;
  for (unsigned i = 0; i < kClasses; i++) {
    const Row& r = rows[i];
    if (r.hits + r.misses == 0) continue;
    if (json) {
      o.str(first ? ",\"frame_pools\":[" : ",")
          .str("{\"size\":")
          .num((i + 1) * 16)
          .str(",\"hits\":")
          .num(r.hits)
          .str(",\"misses\":")
          .num(r.misses)
          .str(",\"remote_frees\":")
          .num(r.remote)
          .str(",\"pooled\":")
          .num(r.pooled)
          .ch('}');
    } else {
      if (first)
        o.str("  frame pools (size: hits, misses, freed by another thread, pooled now):\n");
      o.str("    ")
          .num((i + 1) * 16)
          .str(" B: ")
          .num(r.hits)
          .str(", ")
          .num(r.misses)
          .str(", ")
          .num(r.remote)
          .str(", ")
          .num(r.pooled)
          .ch('\n');
    }
    first = false;
  }
  if (json && !first) o.ch(']');
  o.flush(fd);
}

}  // namespace

// Kept out of line so that the fast paths below need no saved registers.
__attribute__((noinline)) void* frame_alloc_slow(size_t size) {
  size_t s = round16(size);
  FrameCache* c = s <= kMaxPooled ? cache() : nullptr;
  if (c) {
    Pool& pl = c->pools[s / 16 - 1];
    if (c->incoming.load(std::memory_order_relaxed)) drain(c);
    if (Node* n = pl.head) {
      pl.head = n->next;
      pl.count--;
      pl.hits++;
      return n;
    }
    pl.misses++;
    // Grow at once when a quarter of the capacity has missed (the idle
    // point's tick, which shrinks, may be a second apart).
    if (++pl.misses_since_adapt > pl.cap / 4 && pl.cap < kMaxCap) {
      pl.cap *= 2;
      pl.misses_since_adapt = 0;
    }
  }
  // Pooled frames outlive any arena the thread binds: from its default heap.
  void* p = internal_malloc(s + sizeof(Trailer));
  if (p) *trailer(p, s) = Trailer{c, 0};
  return p;
}

void* frame_alloc(size_t size) {
  size_t s = round16(size);
  FrameCache* c = t_frames;
  if (__builtin_expect(c != nullptr && s <= kMaxPooled, 1)) {
    Pool& pl = c->pools[s / 16 - 1];
    if (Node* n = pl.head) {
      pl.head = n->next;
      pl.count--;
      pl.hits++;
      return n;
    }
  }
  return frame_alloc_slow(size);
}

__attribute__((noinline)) void frame_free_slow(void* p, size_t size) {
  size_t s = round16(size);
  Trailer* t = trailer(p, s);
  if (t->release) return reinterpret_cast<void (*)(void*, size_t)>(t->release)(p, size);
  FrameCache* owner = t->owner;
  // A thread that only frees frames needs a cache too: its batches.
  FrameCache* c = owner ? cache() : nullptr;
  if (!owner || !c) {
    am_free(p);
    return;
  }
  unsigned cls = static_cast<unsigned>(s / 16 - 1);
  Node* n = static_cast<Node*>(p);
  if (owner == c) {
    pool_put(c->pools[cls], n);
    return;
  }
  c->pools[cls].remote_frees++;
  n->cls = cls;
  send_home(c, owner, n);
}

void frame_free(void* p, size_t size) {
  if (!p) return;
  size_t s = round16(size);
  Trailer* t = trailer(p, s);
  FrameCache* c = t_frames;
  // Home, pooled, with room: push.
  if (__builtin_expect(t->owner == c && c != nullptr && t->release == 0, 1)) {
    Pool& pl = c->pools[s / 16 - 1];
    if (pl.count < pl.cap) {
      Node* n = static_cast<Node*>(p);
      n->next = pl.head;
      pl.head = n;
      pl.count++;
      return;
    }
  }
  frame_free_slow(p, size);
}

void frame_idle_work(FrameCache* c, bool tick) {
  if (c->out_pending) flush_all(c);
  if (c->incoming.load(std::memory_order_relaxed)) drain(c);
  if (tick) adapt(c);
}

}  // namespace am::frames

using namespace am::frames;

extern "C" {

void* am_frame_alloc(size_t size) { return frame_alloc(size); }

AM_APPROXIMATE_READS void am_frame_stats(size_t size, am_frame_stats_t* out) {
  *out = am_frame_stats_t{};
  size_t s = round16(size);
  if (s > kMaxPooled) return;
  am::LockGuard g;
  for (FrameCache* c = g_all; c; c = c->next_all) {
    const Pool& p = c->pools[s / 16 - 1];
    out->hits += p.hits;
    out->misses += p.misses;
    out->remote_frees += p.remote_frees;
    out->pooled += p.count;
  }
}
void am_frame_free(void* p, size_t size) { frame_free(p, size); }

}  // extern "C"
