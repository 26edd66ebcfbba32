// amalloc: the C++ API over amalloc.h (heaps, the executor idle point,
// coroutine-frame pools, epoch-based reclamation).
#ifndef AMALLOC_AMALLOC_HPP
#define AMALLOC_AMALLOC_HPP

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <memory_resource>
#include <new>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>

#include "amalloc/amalloc.h"

namespace amalloc {

// An owning handle to a heap made with am_heap_new: deletes it (its live
// blocks stay valid) when destroyed. destroy() frees all its blocks at once
// (a per-request or per-connection arena) and keeps the heap.
class heap {
 public:
  heap() : h_(am_heap_new()) {
    if (!h_) throw std::bad_alloc();
  }
  ~heap() {
    if (h_) am_heap_delete(h_);
  }
  heap(heap&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  heap& operator=(heap&& o) noexcept {
    if (this != &o) {
      if (h_) am_heap_delete(h_);
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  heap(const heap&) = delete;
  heap& operator=(const heap&) = delete;

  void* malloc(std::size_t n) noexcept { return am_heap_malloc(h_, n); }
  void* calloc(std::size_t count, std::size_t n) noexcept { return am_heap_calloc(h_, count, n); }
  void* realloc(void* p, std::size_t n) noexcept { return am_heap_realloc(h_, p, n); }
  void* memalign(std::size_t alignment, std::size_t n) noexcept {
    return am_heap_memalign(h_, alignment, n);
  }
  // Frees every block of this heap; the heap stays usable.
  void destroy() noexcept { am_heap_destroy(h_); }
  am_heap_t* get() const noexcept { return h_; }

 private:
  am_heap_t* h_;
};

// Binds a heap to the calling thread for a scope (every malloc and new of
// the thread comes from it) and restores the previous heap at the end.
class heap_scope {
 public:
  explicit heap_scope(heap& h) : prev_(bind(h.get())) {}
  ~heap_scope() { am_heap_bind(prev_); }
  heap_scope(const heap_scope&) = delete;
  heap_scope& operator=(const heap_scope&) = delete;

 private:
  static am_heap_t* bind(am_heap_t* h) {
    errno = 0;
    am_heap_t* prev = am_heap_bind(h);
    if (prev == h && errno == EBUSY)
      throw std::logic_error("amalloc::heap_scope: the heap is bound on another thread");
    return prev;
  }
  am_heap_t* prev_;
};

// A std::pmr::memory_resource that allocates from a heap (used by one
// thread at a time, like the heap).
class heap_resource : public std::pmr::memory_resource {
 public:
  explicit heap_resource(heap& h) noexcept : h_(h.get()) {}
  am_heap_t* get() const noexcept { return h_; }

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    void* p = alignment <= 16 ? am_heap_malloc(h_, bytes) : am_heap_memalign(h_, alignment, bytes);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void do_deallocate(void* p, std::size_t, std::size_t) override { am_free(p); }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    auto* o = dynamic_cast<const heap_resource*>(&other);
    return o != nullptr && o->h_ == h_;
  }

  am_heap_t* h_;
};

// An STL allocator over a heap: std::vector<int, amalloc::allocator<int>>
// v{amalloc::allocator<int>(h)}.
template <class T>
class allocator {
 public:
  using value_type = T;
  explicit allocator(heap& h) noexcept : h_(h.get()) {}
  template <class U>
  allocator(const allocator<U>& o) noexcept : h_(o.get()) {}

  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    void* p = alignof(T) <= 16 ? am_heap_malloc(h_, n * sizeof(T))
                               : am_heap_memalign(h_, alignof(T), n * sizeof(T));
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { am_free(p); }
  am_heap_t* get() const noexcept { return h_; }

  template <class U>
  bool operator==(const allocator<U>& o) const noexcept {
    return h_ == o.get();
  }

 private:
  am_heap_t* h_;
};

// The executor idle point (see am_executor_idle).
inline void executor_idle() noexcept { am_executor_idle(); }

// ---- epoch-based deferred reclamation (see amalloc.h) ----------------------
namespace epoch {

// Pins the calling thread for its lifetime: nodes reachable from a shared
// structure stay valid until it is destroyed. Must be destroyed on the
// thread that made it and not live across co_await or a blocking call;
// debug builds (NDEBUG not defined) abort if it is released elsewhere.
class guard {
 public:
  guard() noexcept {
    am_epoch_enter_fast();
#ifndef NDEBUG
    owner_ = std::this_thread::get_id();
#endif
  }
  ~guard() {
#ifndef NDEBUG
    if (owner_ != std::this_thread::get_id()) {
      std::fputs(
          "amalloc: epoch::guard released on another thread than the one that pinned "
          "(held across a suspension point?); aborting\n",
          stderr);
      std::abort();
    }
#endif
    am_epoch_exit_fast();
  }
  guard(const guard&) = delete;
  guard& operator=(const guard&) = delete;

 private:
#ifndef NDEBUG
  std::thread::id owner_;
#endif
};

// Registers the calling thread as an executor in quiescent-state mode for
// the object's lifetime (am_epoch_executor_register).
class executor {
 public:
  executor() noexcept { am_epoch_executor_register(); }
  ~executor() { am_epoch_executor_unregister(); }
  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;
};

// Takes a registered executor offline around a blocking wait.
class offline_scope {
 public:
  offline_scope() noexcept { am_epoch_offline(); }
  ~offline_scope() { am_epoch_online(); }
  offline_scope(const offline_scope&) = delete;
  offline_scope& operator=(const offline_scope&) = delete;
};

inline void synchronize() noexcept { am_epoch_synchronize(); }
inline void barrier() noexcept { am_epoch_barrier(); }

}  // namespace epoch

// After a grace period: `delete p` (its destructor, then the global
// operator delete: amalloc's when amalloc replaces malloc).
template <class T>
void retire(T* p) {
  if (p == nullptr) return;
  // The block `delete` frees starts at the most derived object (its size
  // counts in the pending bytes); the deleter gets p itself.
  const volatile void* block;
  if constexpr (std::is_polymorphic_v<T>)
    block = dynamic_cast<const volatile void*>(p);
  else
    block = p;
  am_epoch_defer_free(
      const_cast<void*>(block), [](void*, void* q) { delete static_cast<T*>(q); },
      const_cast<void*>(static_cast<const volatile void*>(p)));
}

// After a grace period: d(p). A stateful deleter is kept until then in a
// small block of amalloc's own (a frame of the thread's pools, never from
// a bound heap that am_heap_destroy could free first); one aligned to more
// than 16 bytes, with the aligned operator new.
template <class T, class D>
void retire(T* p, D d) {
  if constexpr (std::is_empty_v<D> && std::is_default_constructible_v<D>) {
    am_epoch_defer(
        const_cast<void*>(static_cast<const volatile void*>(p)),
        [](void* q, void*) { D{}(static_cast<T*>(q)); }, nullptr);
  } else {
    struct holder {
      T* p;
      D d;
    };
    constexpr bool framed = alignof(holder) <= 16;  // am_frame_alloc's alignment
    void* mem;
    if constexpr (framed)
      mem = am_frame_alloc(sizeof(holder));
    else
      mem = ::operator new (sizeof(holder), std::align_val_t{alignof(holder)});
    if (mem == nullptr) {
#if defined(__cpp_exceptions)
      throw std::bad_alloc();
#else
      std::abort();
#endif
    }
    auto* h = ::new (mem) holder{p, std::move(d)};
    am_epoch_defer(
        h,
        [](void* q, void*) {
          auto* k = static_cast<holder*>(q);
          k->d(k->p);
          k->~holder();
          if constexpr (framed)
            am_frame_free(k, sizeof(holder));
          else
            ::operator delete (k, std::align_val_t{alignof(holder)});
        },
        nullptr);
  }
}

namespace detail {

constexpr std::size_t frame_round(std::size_t n) {
  return n < 16 ? 16 : (n + 15) & ~std::size_t{15};
}

// Follows every frame at frame_round(size): how to release it. This
// mirrors the trailer of am_frame_alloc frames (owner 0, release set).
struct frame_trailer {
  void* owner;
  void (*release)(void*, std::size_t);
};

inline void* frame_for(std::size_t n, const heap& h) {
  std::size_t r = frame_round(n);
  void* p = am_heap_malloc(h.get(), r + sizeof(frame_trailer));
  if (!p) throw std::bad_alloc();
  ::new (static_cast<char*>(p) + r)
      frame_trailer{nullptr, [](void* q, std::size_t) { am_free(q); }};
  return p;
}

template <class Alloc>
struct allocator_frame {
  using byte_alloc = typename std::allocator_traits<Alloc>::template rebind_alloc<std::byte>;
  static constexpr std::size_t extra = frame_round(sizeof(frame_trailer) + sizeof(byte_alloc));

  static void* make(std::size_t n, const Alloc& a) {
    std::size_t r = frame_round(n);
    byte_alloc ba(a);
    std::byte* p = std::allocator_traits<byte_alloc>::allocate(ba, r + extra);
    ::new (p + r) frame_trailer{nullptr, &release};
    ::new (p + r + sizeof(frame_trailer)) byte_alloc(std::move(ba));
    return p;
  }
  static void release(void* frame, std::size_t n) {
    std::size_t r = frame_round(n);
    auto* p = static_cast<std::byte*>(frame);
    auto* stored = reinterpret_cast<byte_alloc*>(p + r + sizeof(frame_trailer));
    byte_alloc ba(std::move(*stored));
    stored->~byte_alloc();
    std::allocator_traits<byte_alloc>::deallocate(ba, p, r + extra);
  }
};

template <class Alloc>
void* frame_for(std::size_t n, const Alloc& a) {
  return allocator_frame<Alloc>::make(n, a);
}

}  // namespace detail

// Base for a coroutine promise type: its frames come from the exact-size
// pools of the thread that creates them (am_frame_alloc) and go back with
// sized delete, to the creating thread's pool even when another thread
// destroys them. A coroutine whose parameters start with
// (std::allocator_arg_t, A) takes its frame from A instead: an
// amalloc::heap, or any standard allocator.
struct pooled_frame {
  static void* operator new(std::size_t n) {
    if (void* p = am_frame_alloc(n)) return p;
    throw std::bad_alloc();
  }
  template <class Alloc, class... Args>
  static void* operator new(std::size_t n, std::allocator_arg_t, const Alloc& a, const Args&...) {
    return detail::frame_for(n, a);
  }
  // Member coroutines: the object comes first.
  template <class This, class Alloc, class... Args>
  static void* operator new(std::size_t n, const This&, std::allocator_arg_t, const Alloc& a,
                            const Args&...) {
    return detail::frame_for(n, a);
  }
  static void operator delete(void* p, std::size_t n) noexcept { am_frame_free(p, n); }
};

}  // namespace amalloc

#endif  // AMALLOC_AMALLOC_HPP
