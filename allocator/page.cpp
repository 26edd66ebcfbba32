#include "allocator/page.h"

#include "allocator/options.h"
#include "allocator/os.h"
#include "allocator/segment.h"
#include "allocator/trim.h"

namespace am {

void page_init(Page* pg, unsigned cls, Heap* h) {
  Segment* s = segment_of_page(pg);
  size_t bs = kClassSize[cls];
  pg->start = page_area(s, pg);
  pg->block_size = bs;
  pg->divc = divisibility_magic(bs);
  pg->reserved = static_cast<uint32_t>(page_area_size(s) / bs);
  pg->capacity = 0;
  pg->used = 0;
  pg->free = nullptr;
  pg->cls = static_cast<uint8_t>(cls);
  pg->is_head = 0;
  pg->dirty = 1;
  pg->trim_used = 0;
  pg->trim_seen = 0;
  trim_forget(pg);
  pg->next = pg->prev = nullptr;
  pg->xthread_free.store(0, std::memory_order_relaxed);
  pg->in_full = 0;
  pg->heap.store(h, std::memory_order_relaxed);
  pg->owner_fast.store(h, std::memory_order_relaxed);
}

bool page_extend(Page* pg) {
  uint32_t left = pg->reserved - pg->capacity;
  if (left == 0) return false;
  uint32_t n = static_cast<uint32_t>(kExtendBytes / pg->block_size);
  if (n == 0) n = 1;
  if (n > left) n = left;
  uint8_t* first = pg->start + size_t{pg->capacity} * pg->block_size;
  uint8_t* b = first;
  for (uint32_t i = 1; i < n; i++, b += pg->block_size)
    reinterpret_cast<Block*>(b)->next = reinterpret_cast<Block*>(b + pg->block_size);
  reinterpret_cast<Block*>(b)->next = pg->free;
  pg->free = reinterpret_cast<Block*>(first);
  pg->capacity += n;
  return true;
}

namespace {

__thread uint64_t t_shuffle_seed __attribute__((tls_model("initial-exec")));

uint32_t gcd(uint32_t a, uint32_t b) {
  while (b) {
    uint32_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// AMALLOC_MESH: the rest of the page in a random order (a random stride
// coprime with the count, from a random start), so that the blocks that
// stay live are spread over the page differently in every page, which is
// what lets sparse pages mesh (Mesh, PLDI 2019). Touches the whole page.
Block* carve_shuffled(Page* pg) {
  uint64_t x = t_shuffle_seed;
  if (x == 0) x = reinterpret_cast<uintptr_t>(&t_shuffle_seed) ^ os_now_us() ^ 0x9e3779b97f4a7c15u;
  auto next = [&x] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  const uint32_t n = pg->reserved - pg->capacity;
  const uint32_t base = pg->capacity;
  uint32_t stride = n > 1 ? static_cast<uint32_t>(next() % (n - 1)) + 1 : 1;
  while (gcd(stride, n) != 1) stride = stride % (n - 1) + 1;
  uint32_t at = static_cast<uint32_t>(next() % n);
  t_shuffle_seed = x;
  const size_t bs = pg->block_size;
  auto block = [&](uint32_t i) {
    return reinterpret_cast<Block*>(pg->start + size_t{base + i} * bs);
  };
  Block* first = block(at);
  Block* head = pg->free;
  // Linked back to front, so the list runs in the shuffled order.
  uint32_t last = static_cast<uint32_t>((at + uint64_t{stride} * (n - 1)) % n);
  for (uint32_t k = n - 1, i = last; k > 0; k--) {
    Block* b = block(i);
    b->next = head;
    head = b;
    i = i >= stride ? i - stride : i + n - stride;
  }
  pg->free = head;
  pg->capacity = pg->reserved;
  return first;
}

}  // namespace

Block* page_carve(Page* pg) {
  if (pg->capacity == pg->reserved) return nullptr;
  if (g_options.mesh) return carve_shuffled(pg);
  const size_t bs = pg->block_size;
  uint8_t* frontier = pg->start + size_t{pg->capacity} * bs;
  // Blocks that start before the next OS page boundary (none if the carved
  // part ends on one): the block handed out before them lies in that page.
  uintptr_t f = reinterpret_cast<uintptr_t>(frontier);
  uintptr_t boundary = (f + kOsPage - 1) & ~uintptr_t{kOsPage - 1};
  uint32_t n = static_cast<uint32_t>((boundary - f + bs - 1) / bs);
  uint32_t left = pg->reserved - pg->capacity;
  if (n >= left) n = left - 1;  // keep one to hand out
  if (n > 0) {
    uint8_t* b = frontier;
    for (uint32_t i = 1; i < n; i++, b += bs)
      reinterpret_cast<Block*>(b)->next = reinterpret_cast<Block*>(b + bs);
    reinterpret_cast<Block*>(b)->next = pg->free;
    pg->free = reinterpret_cast<Block*>(frontier);
  }
  pg->capacity += n + 1;
  return reinterpret_cast<Block*>(frontier + size_t{n} * bs);
}

uint32_t page_collect_unwalked(Page* pg) {
  uint32_t n = xcount(pg->xthread_free.load(std::memory_order_relaxed));
  if (n == 0 || (pg->free && n + pg->is_head != pg->used)) return 0;
  return page_collect(pg);
}

uint32_t page_collect(Page* pg) {
  // One collector at a time, and only it changes the flag, so the flag is
  // the same before and after the exchange: the owner under its heap lock;
  // g_lock's holder for pages without one; or a sweep, which holds g_lock
  // and the heap lock (sweep.cpp).
  uintptr_t v = pg->xthread_free.load(std::memory_order_seq_cst);
  if (xcount(v) == 0) return 0;
  v = pg->xthread_free.exchange(v & kXFull, std::memory_order_seq_cst);
  Block* list = xlist(v);
  uint32_t n = xcount(v);
  // The allocation path collects a page whose own list ran out: no walk.
  if (pg->free) {
    Block* tail = list;
    while (tail->next) tail = tail->next;
    tail->next = pg->free;
  }
  pg->free = list;
  pg->used -= n;
  return n;
}

}  // namespace am
