// Coroutine-frame pools: exact-size LIFO pools per thread (executor), with
// frames freed by another thread returned home in batches.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace am::frames {

// Frames up to this size are pooled; larger ones go straight to amalloc.
constexpr size_t kMaxPooled = 4096;
constexpr unsigned kClasses = kMaxPooled / 16;
// Frames returned to one owner are sent in batches of this many.
constexpr uint32_t kBatch = 32;
constexpr unsigned kOutgoing = 4;

struct FrameCache;

// Every frame is followed (at its size rounded up to 16) by this trailer:
// the pool it belongs to, or, for frames from an application allocator,
// the function that releases it (see amalloc.hpp).
struct Trailer {
  FrameCache* owner;  // nullptr: not pooled
  uintptr_t release;  // 0: a pooled (or plain) frame; else void (*)(void*, size_t)
};

// A frame while it sits in a pool or travels home.
struct Node {
  Node* next;
  uint32_t cls;
};

struct Pool {
  Node* head;
  uint32_t count;
  uint32_t cap;
  uint32_t misses_since_adapt;
  uint64_t hits;
  uint64_t hits_at_adapt;  // `hits` at the last adaptation
  uint64_t misses;
  uint64_t remote_frees;  // frames of this size this thread freed for another
};

struct Outgoing {
  FrameCache* owner;
  Node* first;
  Node* last;
  uint32_t count;
};

struct FrameCache {
  Pool pools[kClasses];
  std::atomic<Node*> incoming;  // frames other threads returned, as batches
  Outgoing out[kOutgoing];
  uint32_t out_pending;  // frames waiting in `out`
  std::atomic<uint8_t> live;
  FrameCache* next_all;
  FrameCache* next_free;
};

inline size_t round16(size_t n) { return n < 16 ? 16 : (n + 15) & ~size_t{15}; }

void* frame_alloc(size_t size);
void frame_free(void* p, size_t size);
// The executor idle point's part: send batches home, take returned frames
// in, and on a tick (see pools/executor.cpp) shrink pools that kept
// frames unused and give those back.
extern __thread FrameCache* t_frames __attribute__((tls_model("initial-exec")));
void frame_idle_work(FrameCache* c, bool tick);
inline bool frame_work_waiting(const FrameCache* c) {
  return (c->out_pending != 0) | (c->incoming.load(std::memory_order_relaxed) != nullptr);
}

}  // namespace am::frames
