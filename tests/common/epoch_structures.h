// Lock-free structures whose removed nodes go back through amalloc's epoch
// collector, for the epoch tests: a Treiber stack, a Michael-Scott queue and
// a hash map (fixed buckets; writers lock a bucket, readers take no lock).
//
// Every node carries a magic word and a checksum of its contents. Nodes are
// retired with a deleter that overwrites them with a poison pattern before
// they are freed, so a reader that still holds a node when the collector
// reclaims it sees the poison (or a checksum mismatch, or the magic word
// overwritten by the allocator's free list): premature reclamation makes the
// tests fail instead of going unnoticed. Readers check every node they
// reach, and check it again after a pause while still pinned.
//
// Failures are counted (any thread may find one) and the first few are
// described; the test's main thread reports them.
#ifndef AMALLOC_TESTS_COMMON_EPOCH_STRUCTURES_H
#define AMALLOC_TESTS_COMMON_EPOCH_STRUCTURES_H

#include <amalloc/amalloc.h>

#include <amalloc/amalloc.hpp>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "amalloc_test_support.h"

namespace epochs {

using u64 = std::uint64_t;

constexpr u64 kMagic = 0x5EC0DE5EC0DE0001ULL;
constexpr u64 kPoison = 0xDEADBEEFDEADBEEFULL;
constexpr std::uintptr_t kPoisonPtr = 0xDEADBEEFDEADBEE0ULL;

// ---- failures ------------------------------------------------------------------

struct Failures {
  std::atomic<u64> count{0};
  std::mutex m;
  std::vector<std::string> first;  // the first few descriptions

  void add(const std::string& what) {
    if (count.fetch_add(1) < 8) {
      std::lock_guard<std::mutex> g(m);
      first.push_back(what);
    }
  }
  void reset() {
    std::lock_guard<std::mutex> g(m);
    count.store(0);
    first.clear();
  }
  std::string describe() {
    std::lock_guard<std::mutex> g(m);
    std::string s = std::to_string(count.load()) + " failure(s)";
    for (const auto& f : first) s += "\n  " + f;
    return s;
  }
};

inline Failures& failures() {
  static Failures f;
  return f;
}

// ---- nodes -----------------------------------------------------------------------

// How a node was allocated and how it is retired.
enum class Kind : u64 {
  c_fn = 1,         // am_malloc; am_retire_fn(p, poison-fn, ctx)
  cpp_deleter = 2,  // am_malloc; amalloc::retire(p, deleter) (poison + am_free)
  cpp_delete = 3,   // new; amalloc::retire(p): ~Node poisons, operator delete frees
  plain = 4,        // am_malloc; am_retire(p): freed without a callback (no poison)
};

inline u64 checksum(u64 key, u64 value, u64 kind) {
  return amt::mix64(key * 0x9E3779B97F4A7C15ULL ^ amt::mix64(value) ^ (kind << 56) ^ kMagic);
}

// Reclaimed-node counters of one test; the deleters' ctx.
struct Counters {
  std::atomic<u64> retired{0};    // nodes given to the collector with a callback
  std::atomic<u64> reclaimed{0};  // callbacks run
  std::atomic<u64> plain{0};      // nodes retired with am_retire (no callback)
};

// The payload and link of a node of any of the structures. Fields are
// written once, before the node is published; the link is atomic.
struct Node {
  u64 magic;
  u64 key;
  u64 value;
  u64 kind;
  u64 check;
  std::atomic<Node*> next;

  Node(u64 k, u64 v, Kind kd)
      : magic(kMagic),
        key(k),
        value(v),
        kind(static_cast<u64>(kd)),
        check(checksum(k, v, static_cast<u64>(kd))),
        next(nullptr) {}
  // Poisons (atomic stores, so the compiler keeps them in a destructor).
  ~Node() { poison(); }
  void poison() {
    std::atomic_ref<u64>(magic).store(kPoison, std::memory_order_relaxed);
    std::atomic_ref<u64>(key).store(kPoison, std::memory_order_relaxed);
    std::atomic_ref<u64>(value).store(kPoison, std::memory_order_relaxed);
    std::atomic_ref<u64>(kind).store(kPoison, std::memory_order_relaxed);
    std::atomic_ref<u64>(check).store(kPoison, std::memory_order_relaxed);
    next.store(reinterpret_cast<Node*>(kPoisonPtr), std::memory_order_relaxed);
  }
};

// Describes what is wrong with `n`, or returns an empty string.
inline std::string node_problem(const Node* n) {
  if (n == nullptr) return "null node";
  if (reinterpret_cast<std::uintptr_t>(n) == kPoisonPtr) return "followed a poisoned link";
  u64 magic = n->magic, key = n->key, value = n->value, kind = n->kind, check = n->check;
  char buf[200];
  if (magic == kPoison || key == kPoison || value == kPoison || check == kPoison) {
    std::snprintf(buf, sizeof buf, "node %p is poisoned: reclaimed while a reader held it",
                  static_cast<const void*>(n));
    return buf;
  }
  if (magic != kMagic || check != checksum(key, value, kind)) {
    std::snprintf(buf, sizeof buf,
                  "node %p corrupted (magic %llx key %llx value %llx check %llx): reclaimed and "
                  "reused while a reader held it?",
                  static_cast<const void*>(n), static_cast<unsigned long long>(magic),
                  static_cast<unsigned long long>(key), static_cast<unsigned long long>(value),
                  static_cast<unsigned long long>(check));
    return buf;
  }
  return {};
}

// Checks `n`; records a failure. Returns whether it is intact.
inline bool verify(const Node* n, const char* where) {
  std::string p = node_problem(n);
  if (p.empty()) return true;
  failures().add(std::string(where) + ": " + p);
  return false;
}

inline Node* load_next(const Node* n) {
  Node* nx = n->next.load(std::memory_order_acquire);
  if (reinterpret_cast<std::uintptr_t>(nx) == kPoisonPtr) {
    failures().add("followed a poisoned link: a node was reclaimed while a reader held it");
    return nullptr;
  }
  return nx;
}

inline void poison_and_count(void* p, void* ctx) {
  static_cast<Node*>(p)->poison();
  static_cast<Counters*>(ctx)->reclaimed.fetch_add(1, std::memory_order_relaxed);
}

// A node of a random kind (kinds: a bit mask of the Kinds allowed, bit k-1
// for Kind k).
inline Node* make_node(u64 key, u64 value, amt::Rng& rng, unsigned kinds = 0xF) {
  Kind kd;
  do {
    kd = static_cast<Kind>(1 + rng.below(4));
  } while (!(kinds & (1u << (static_cast<unsigned>(kd) - 1))));
  if (kd == Kind::cpp_delete) return new Node(key, value, kd);
  void* p = am_malloc(sizeof(Node));
  if (!p) {
    std::fprintf(stderr, "epoch test: am_malloc failed\n");
    std::abort();
  }
  return ::new (p) Node(key, value, kd);
}

// Frees a node that was never published (or after the structure is gone).
inline void free_now(Node* n) {
  if (static_cast<Kind>(n->kind) == Kind::cpp_delete) {
    delete n;
  } else {
    n->~Node();
    am_free(n);
  }
}

// Retires an unlinked node, by the method its kind says.
inline void retire(Node* n, Counters& c) {
  switch (static_cast<Kind>(n->kind)) {
    case Kind::c_fn:
      c.retired.fetch_add(1, std::memory_order_relaxed);
      am_retire_fn(n, &poison_and_count, &c);
      break;
    case Kind::cpp_deleter: {
      c.retired.fetch_add(1, std::memory_order_relaxed);
      Counters* cp = &c;
      amalloc::retire(n, [cp](Node* q) {
        q->~Node();  // poisons
        am_free(q);
        cp->reclaimed.fetch_add(1, std::memory_order_relaxed);
      });
      break;
    }
    case Kind::cpp_delete:
      // ~Node poisons; counted by the stats of the collector only.
      c.plain.fetch_add(1, std::memory_order_relaxed);
      amalloc::retire(n);
      break;
    case Kind::plain:
      c.plain.fetch_add(1, std::memory_order_relaxed);
      am_retire(n);
      break;
    default:
      failures().add("retiring a node of unknown kind (corrupted)");
  }
}

// ---- Treiber stack -----------------------------------------------------------------

class Stack {
 public:
  void push(Node* n) {
    Node* h = head_.load(std::memory_order_relaxed);
    do {
      n->next.store(h, std::memory_order_relaxed);
    } while (
        !head_.compare_exchange_weak(h, n, std::memory_order_release, std::memory_order_relaxed));
  }
  // Must be pinned. The caller retires the node it gets (after reading it).
  Node* pop() {
    Node* h = head_.load(std::memory_order_acquire);
    while (h != nullptr) {
      if (!verify(h, "stack pop")) return nullptr;
      Node* nx = load_next(h);  // h may be popped and retired meanwhile: still readable
      if (head_.compare_exchange_weak(h, nx, std::memory_order_acquire, std::memory_order_acquire))
        return h;
    }
    return nullptr;
  }
  // Must be pinned: walks up to `limit` nodes from the top, checking each.
  std::size_t scan(std::size_t limit, bool pause) {
    std::size_t seen = 0;
    Node* first = nullptr;
    for (Node* n = head_.load(std::memory_order_acquire); n != nullptr && seen < limit;
         n = load_next(n)) {
      if (!verify(n, "stack scan")) return seen;
      if (!first) first = n;
      ++seen;
    }
    if (pause && first) {
      // Give writers time to pop and retire `first`; it must stay intact.
      std::this_thread::yield();
      verify(first, "stack scan after a pause");
    }
    return seen;
  }
  Node* head_unsafe() const { return head_.load(); }

 private:
  std::atomic<Node*> head_{nullptr};
};

// ---- Michael-Scott queue -------------------------------------------------------------

class Queue {
 public:
  explicit Queue(amt::Rng& rng) {
    Node* dummy = make_node(0, 0, rng, 0x3);  // am_malloc kinds
    head_.store(dummy);
    tail_.store(dummy);
  }
  ~Queue() {
    for (Node* n = head_.load(); n != nullptr;) {
      Node* nx = n->next.load();
      free_now(n);
      n = nx;
    }
  }
  // Must be pinned (reads tail, which may be retired meanwhile).
  void enqueue(Node* n) {
    n->next.store(nullptr, std::memory_order_relaxed);
    for (;;) {
      Node* t = tail_.load(std::memory_order_acquire);
      if (!verify(t, "queue tail")) return;
      Node* nx = load_next(t);
      if (t != tail_.load(std::memory_order_acquire)) continue;
      if (nx == nullptr) {
        Node* expected = nullptr;
        if (t->next.compare_exchange_weak(expected, n, std::memory_order_release,
                                          std::memory_order_relaxed)) {
          tail_.compare_exchange_strong(t, n, std::memory_order_release, std::memory_order_relaxed);
          return;
        }
      } else {
        tail_.compare_exchange_weak(t, nx, std::memory_order_release, std::memory_order_relaxed);
      }
    }
  }
  // Must be pinned. On success copies out the dequeued key/value and returns
  // the old dummy, which the caller retires.
  Node* dequeue(u64* key, u64* value, bool pause) {
    for (;;) {
      Node* h = head_.load(std::memory_order_acquire);
      Node* t = tail_.load(std::memory_order_acquire);
      if (!verify(h, "queue head")) return nullptr;
      Node* nx = load_next(h);
      if (h != head_.load(std::memory_order_acquire)) continue;
      if (nx == nullptr) return nullptr;
      if (h == t) {
        tail_.compare_exchange_weak(t, nx, std::memory_order_release, std::memory_order_relaxed);
        continue;
      }
      if (!verify(nx, "queue next")) return nullptr;
      *key = nx->key;
      *value = nx->value;
      if (pause) {
        std::this_thread::yield();
        if (!verify(nx, "queue next after a pause")) return nullptr;
      }
      if (head_.compare_exchange_weak(h, nx, std::memory_order_acq_rel, std::memory_order_relaxed))
        return h;
    }
  }

 private:
  alignas(64) std::atomic<Node*> head_;
  alignas(64) std::atomic<Node*> tail_;
};

// ---- hash map ----------------------------------------------------------------------

// Fixed buckets of singly linked lists. Writers lock the bucket (a spin
// lock) and replace a node by a copy to change its value (readers never see
// a node change); readers walk without a lock.
class Map {
 public:
  explicit Map(std::size_t buckets) : buckets_(buckets) {}
  ~Map() {
    for (auto& b : buckets_)
      for (Node* n = b.head.load(); n != nullptr;) {
        Node* nx = n->next.load();
        free_now(n);
        n = nx;
      }
  }
  std::size_t bucket_of(u64 key) const { return amt::mix64(key) % buckets_.size(); }

  // Must be pinned. Returns whether `key` is there (and its value).
  bool find(u64 key, u64* value, bool pause) {
    const Bucket& b = buckets_[bucket_of(key)];
    for (Node* n = b.head.load(std::memory_order_acquire); n != nullptr; n = load_next(n)) {
      if (!verify(n, "map find")) return false;
      if (bucket_of(n->key) != bucket_of(key)) {
        failures().add("map find: a node of another bucket in the chain (reclaimed and reused?)");
        return false;
      }
      if (n->key == key) {
        *value = n->value;
        if (pause) {
          std::this_thread::yield();
          verify(n, "map find after a pause");
        }
        return true;
      }
    }
    return false;
  }

  // Set key to value (insert or replace). Retires the replaced node.
  void put(u64 key, u64 value, amt::Rng& rng, Counters& c, unsigned kinds = 0xF) {
    Bucket& b = buckets_[bucket_of(key)];
    Node* fresh = make_node(key, value, rng, kinds);
    std::lock_guard<Spin> g(b.lock);
    std::atomic<Node*>* link = &b.head;
    for (Node* n = link->load(std::memory_order_relaxed); n != nullptr;
         n = link->load(std::memory_order_relaxed)) {
      if (n->key == key) {
        fresh->next.store(n->next.load(std::memory_order_relaxed), std::memory_order_relaxed);
        link->store(fresh, std::memory_order_release);
        retire(n, c);
        return;
      }
      link = &n->next;
    }
    fresh->next.store(b.head.load(std::memory_order_relaxed), std::memory_order_relaxed);
    b.head.store(fresh, std::memory_order_release);
  }

  // Removes key; retires its node. Returns whether it was there.
  bool erase(u64 key, Counters& c) {
    Bucket& b = buckets_[bucket_of(key)];
    std::lock_guard<Spin> g(b.lock);
    std::atomic<Node*>* link = &b.head;
    for (Node* n = link->load(std::memory_order_relaxed); n != nullptr;
         n = link->load(std::memory_order_relaxed)) {
      if (n->key == key) {
        link->store(n->next.load(std::memory_order_relaxed), std::memory_order_release);
        retire(n, c);
        return true;
      }
      link = &n->next;
    }
    return false;
  }

  // Quiescent only (no writer running): calls fn(key, value) for every node.
  template <class F>
  void for_each_quiescent(F fn) {
    for (auto& b : buckets_)
      for (Node* n = b.head.load(); n != nullptr; n = n->next.load())
        if (verify(n, "map final walk")) fn(n->key, n->value);
  }

 private:
  struct Spin {
    std::atomic<bool> f{false};
    void lock() {
      while (f.exchange(true, std::memory_order_acquire))
        while (f.load(std::memory_order_relaxed)) std::this_thread::yield();
    }
    void unlock() { f.store(false, std::memory_order_release); }
  };
  struct alignas(64) Bucket {
    std::atomic<Node*> head{nullptr};
    Spin lock;
  };
  std::vector<Bucket> buckets_;
};

}  // namespace epochs

#endif
