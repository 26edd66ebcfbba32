// amalloc: the C++ API over amalloc.h (heaps, the executor idle point).
#ifndef AMALLOC_AMALLOC_HPP
#define AMALLOC_AMALLOC_HPP

#include <cerrno>
#include <cstddef>
#include <memory_resource>
#include <new>
#include <stdexcept>
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

}  // namespace amalloc

#endif  // AMALLOC_AMALLOC_HPP
