/* amalloc: an async-aware malloc replacement. The C API.
 *
 * Every function here works whether or not amalloc also replaces the
 * process's malloc (LD_PRELOAD of libamalloc.so, or linking libamalloc.a):
 * the am_* family always allocates from amalloc. Memory from am_* must be
 * released with am_* (or with free() when amalloc is the process malloc).
 *
 * Errors follow glibc: NULL with errno = ENOMEM on exhaustion or overflow,
 * EINVAL for an invalid alignment.
 */
#ifndef AMALLOC_AMALLOC_H
#define AMALLOC_AMALLOC_H

#include <stddef.h>
#include <stdint.h>

#define AMALLOC_VERSION_MAJOR 0
#define AMALLOC_VERSION_MINOR 1
#define AMALLOC_VERSION_PATCH 0
#define AMALLOC_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define AM_API __attribute__((visibility("default")))
#define AM_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#else
#define AM_API
#define AM_MALLOC_ATTR
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the malloc family ---------------------------------------------- */

/* malloc(3): at least `size` bytes, 16-byte aligned; a unique pointer for 0. */
AM_API void* am_malloc(size_t size) AM_MALLOC_ATTR;
/* calloc(3): zeroed; NULL + ENOMEM when count*size overflows. */
AM_API void* am_calloc(size_t count, size_t size) AM_MALLOC_ATTR;
/* realloc(3) with glibc 2.36 semantics: realloc(NULL, n) == malloc(n);
 * realloc(p, 0) frees p and returns NULL; on failure p is left intact. */
AM_API void* am_realloc(void* p, size_t size);
/* reallocarray(3): realloc(p, count*size) with overflow checking. */
AM_API void* am_reallocarray(void* p, size_t count, size_t size);
/* free(3). Invalid pointers and immediate double frees are reported (see
 * AMALLOC_BAD_FREE). NULL is ignored. */
AM_API void am_free(void* p);
/* free with the size the block was requested with (sized delete). */
AM_API void am_free_sized(void* p, size_t size);
/* memalign(3): `alignment` must be a power of two (EINVAL otherwise). */
AM_API void* am_memalign(size_t alignment, size_t size) AM_MALLOC_ATTR;
/* posix_memalign(3): returns 0, EINVAL or ENOMEM; *out untouched on error. */
AM_API int am_posix_memalign(void** out, size_t alignment, size_t size);
/* aligned_alloc(3) (C11): any power-of-two alignment, as glibc accepts. */
AM_API void* am_aligned_alloc(size_t alignment, size_t size) AM_MALLOC_ATTR;
/* valloc(3) / pvalloc(3): page aligned (pvalloc rounds the size up to pages). */
AM_API void* am_valloc(size_t size) AM_MALLOC_ATTR;
AM_API void* am_pvalloc(size_t size) AM_MALLOC_ATTR;
/* malloc_usable_size(3): bytes usable at p (>= the request); 0 for NULL. */
AM_API size_t am_usable_size(const void* p);

/* ---- heaps (executors, arenas) ------------------------------------------ */

/* A heap: a set of pages that one thread at a time allocates from without
 * locks. Every thread has a default heap; an executor (an event-loop
 * thread, a pool worker) can make its own and bind it, and a request or a
 * connection can use one as an arena that is freed in one call.
 * Blocks of any heap are freed with am_free()/free() by any thread. */
typedef struct am_heap_s am_heap_t;

/* A new, empty heap, bound to no thread. NULL + ENOMEM on failure. */
AM_API am_heap_t* am_heap_new(void);
/* Makes `heap` the calling thread's current heap: malloc, operator new and
 * am_malloc of this thread allocate from it until another is bound. NULL
 * binds the thread's default heap back. Returns the previously bound heap
 * (NULL for the default heap). A heap is bound on one thread at a time:
 * binding a heap another thread has bound is reported, changes nothing and
 * returns `heap` itself with errno = EBUSY. */
AM_API am_heap_t* am_heap_bind(am_heap_t* heap);
/* Allocation from a given heap by the thread that uses it (bound or not):
 * the same contracts as malloc, calloc, realloc and memalign. */
AM_API void* am_heap_malloc(am_heap_t* heap, size_t size) AM_MALLOC_ATTR;
AM_API void* am_heap_calloc(am_heap_t* heap, size_t count, size_t size) AM_MALLOC_ATTR;
AM_API void* am_heap_realloc(am_heap_t* heap, void* p, size_t size);
AM_API void* am_heap_memalign(am_heap_t* heap, size_t alignment, size_t size) AM_MALLOC_ATTR;
/* Frees every block of the heap at once (an arena reset); the heap stays
 * usable. No thread may use the heap's blocks any more. */
AM_API void am_heap_destroy(am_heap_t* heap);
/* The heap goes away; its live blocks stay valid (other heaps take their
 * pages over) and are freed with free() as usual. Unbinds it if the
 * calling thread has it bound. */
AM_API void am_heap_delete(am_heap_t* heap);

/* The executor idle point: an event loop calls it when it is about to
 * block (before epoll_wait, at the end of a run-queue pass). It collects
 * the frees other threads made into this thread's current heap (so that
 * memory becomes reusable even if this thread allocates no more), sends
 * frames home, is a registered executor's epoch quiescent state, and on a
 * tick (at most every 16 ms, at least every second while the background
 * worker runs; every 64th call with AMALLOC_BACKGROUND=0) runs the purge
 * pass and shrinks idle frame pools. A few loads when there is nothing to
 * do. */
AM_API void am_executor_idle(void);

/* ---- coroutine-frame pools ---------------------------------------------- */

/* Exact-size LIFO pools of the calling thread for coroutine frames (or any
 * short-lived object whose size is known at free time). A frame freed by
 * another thread goes back to the thread that allocated it, in batches.
 * Works whether or not amalloc replaces malloc. The pools are bounded,
 * grow when they miss and give unused frames back at the idle point.
 * Every frame must be freed with am_frame_free and the same size. */
AM_API void* am_frame_alloc(size_t size) AM_MALLOC_ATTR;
AM_API void am_frame_free(void* frame, size_t size);
/* Counters of the pools of one frame size (summed over all threads). */
typedef struct am_frame_stats_s {
  uint64_t hits;         /* allocations served from a pool */
  uint64_t misses;       /* allocations that went to amalloc */
  uint64_t remote_frees; /* frees by a thread other than the allocating one */
  uint64_t pooled;       /* frames sitting in pools now */
} am_frame_stats_t;
AM_API void am_frame_stats(size_t size, am_frame_stats_t* out);

/* ---- epoch-based deferred reclamation ------------------------------------ */

/* A thread reading a lock-free structure that other threads change pins
 * the current epoch; a thread that unlinks a node retires it, and the node
 * is freed only after every pin that could still see it is gone (a grace
 * period). Pinning is a plain store (no atomic read-modify-write): the
 * reclaiming side pays, with membarrier(2) where the kernel has it.
 *
 * Rules: a pinned thread may read any node it reaches from the structure
 * until it unpins; it must not keep a pointer past am_epoch_exit. A pin must
 * not be held across a coroutine suspension point or a blocking call: it
 * stops reclamation for every thread. Debug builds abort when a guard is
 * released on another thread than the one that pinned; every build reports
 * a pin still held at the executor idle point (at most once a second per
 * thread), and names a thread pinned for longer than AMALLOC_EPOCH_WARN_MS. */

/* Pin / unpin the calling thread. Nestable; only the outermost pair counts. */
AM_API void am_epoch_enter(void);
AM_API void am_epoch_exit(void);

/* The same, inlined into the caller (what amalloc::epoch::guard uses): a
 * nest count, and at the outermost level one load of the epoch and one
 * store. They read and write the state below, which is amalloc's own. */
typedef struct am_epoch_self_s {
  uint32_t nest; /* pins held; an online executor holds one for good */
  uint32_t perm; /* 1: an online executor */
  uint64_t* pin; /* the thread's pin word; NULL until it registers */
} am_epoch_self_t;
AM_API extern __thread am_epoch_self_t am_epoch_self_ __attribute__((tls_model("initial-exec")));
AM_API extern uint64_t am_epoch_global_;  /* the global epoch */
AM_API extern int am_epoch_reader_fence_; /* 1: no membarrier, readers fence */
AM_API void am_epoch_pin_slow_(void);
AM_API void am_epoch_unpin_slow_(void);

static inline void am_epoch_enter_fast(void) {
  if (am_epoch_self_.nest++ != 0) return;
  if (__builtin_expect(
          am_epoch_self_.pin == NULL || __atomic_load_n(&am_epoch_reader_fence_, __ATOMIC_RELAXED),
          0)) {
    am_epoch_pin_slow_();
    return;
  }
  __atomic_store_n(am_epoch_self_.pin,
                   (__atomic_load_n(&am_epoch_global_, __ATOMIC_ACQUIRE) << 1) | 1,
                   __ATOMIC_RELEASE);
  __atomic_signal_fence(__ATOMIC_SEQ_CST); /* the reclaimer's membarrier does the rest */
}

static inline void am_epoch_exit_fast(void) {
  if (__builtin_expect(am_epoch_self_.nest <= am_epoch_self_.perm, 0)) {
    am_epoch_unpin_slow_(); /* reports the misuse */
    return;
  }
  if (--am_epoch_self_.nest == 0) __atomic_store_n(am_epoch_self_.pin, 0, __ATOMIC_RELEASE);
}
/* Free `p` (a block from amalloc) after a grace period. Anything that is
 * not the start of a live amalloc block is reported (one line naming the
 * function and the pointer) and ignored. */
AM_API void am_retire(void* p);
/* After a grace period call fn(p, ctx), then free `p` (a block from amalloc). */
AM_API void am_retire_fn(void* p, void (*fn)(void* p, void* ctx), void* ctx);
/* After a grace period call fn(p, ctx) and nothing else: `p` may come from
 * any allocator, or be any value. */
AM_API void am_epoch_defer(void* p, void (*fn)(void* p, void* ctx), void* ctx);
/* The same for a function that frees `p`, a live block the caller owns
 * (amalloc::retire's `delete`): if amalloc made it, its size counts in the
 * pending bytes (am_epoch_stats) until fn has run. */
AM_API void am_epoch_defer_free(void* p, void (*fn)(void* p, void* ctx), void* ctx);
/* Wait for a grace period: every pin taken before the call has ended. Must
 * not be called while pinned (reported; returns at once). */
AM_API void am_epoch_synchronize(void);
/* Wait until every retirement made before the call, by any thread, has been
 * reclaimed (its deleter run). Must not be called while pinned. Both waits
 * return at once, reported, when called from a deleter (the caller is the
 * reclaimer they would wait for). */
AM_API void am_epoch_barrier(void);

/* Quiescent-state mode: an executor thread (an event loop) registers once;
 * from then on it counts as pinned all the time, needs no am_epoch_enter,
 * and each am_executor_idle() call is its quiescent state: it holds no
 * pointer into a shared structure there. Around a blocking wait that
 * follows the idle point (epoll_wait) it may go offline, so that it does
 * not hold up reclamation while it sleeps. Guards may still be used on an
 * executor thread; they nest inside its permanent pin. */
AM_API void am_epoch_executor_register(void);
AM_API void am_epoch_executor_unregister(void);
AM_API void am_epoch_offline(void);
AM_API void am_epoch_online(void);

typedef struct am_epoch_stats_s {
  uint64_t epoch;           /* the global epoch */
  uint64_t threads;         /* registered threads (guards or executors) */
  uint64_t retired;         /* retirements over the lifetime */
  uint64_t reclaimed;       /* of them, reclaimed */
  uint64_t pending;         /* retired, not yet reclaimed */
  uint64_t pending_bytes;   /* their amalloc block sizes */
  uint64_t advances;        /* epoch advances */
  uint64_t failed_advances; /* scans that found a thread pinned in an older epoch */
  uint64_t stall_warnings;  /* long-pin warnings printed */
} am_epoch_stats_t;
AM_API void am_epoch_stats(am_epoch_stats_t* out);

/* ---- introspection ---------------------------------------------------- */

/* "0.1.0". */
AM_API const char* am_version(void);
/* 1 if p points into memory amalloc manages (a block or not), else 0.
 * Never faults, whatever p is. */
AM_API int am_owns(const void* p);

/* Defragmentation for programs that can move their objects (as Redis does
 * with jemalloc's hint). amalloc already allocates from the fullest pages
 * so that sparse ones drain; moving the last blocks out of a sparse page
 * lets it go back to the OS. am_defrag_hint(p) is 1 when the block at p
 * sits in a page less than half full that is not the one its heap
 * allocates from: a copy would land in a fuller page. am_defrag_move(p, n)
 * does the move for a block of n bytes when the hint says so: it returns
 * the new address (the caller updates every reference) or p itself when
 * the block stays. Call them from the thread that owns the block's heap. */
AM_API int am_defrag_hint(const void* p);
AM_API void* am_defrag_move(void* p, size_t size);

/* Announce a burst: make `count` blocks of `size` bytes ready for the
 * calling thread's current heap now, carved and faulted in, so that
 * allocating them later takes no page fault and no mmap on the request
 * path. Blocks above 64 KiB are mapped, faulted in and left in the segment
 * cache (up to its limits). Returns how many blocks were made ready. The
 * background worker does the same on its own from each heap's recent
 * demand (AMALLOC_PREDICT). */
AM_API size_t am_prefill(size_t size, size_t count);

/* Give memory back now: collect frees from other threads into the calling
 * thread's heap, retire its empty pages, and purge what has been empty for
 * longer than the purge delay (everything empty when `force` is non-zero). */
AM_API void am_collect(int force);

/* Counters for the whole process. Byte figures are approximate while other
 * threads allocate. */
typedef struct am_stats_s {
  uint64_t reserved_bytes;      /* address space mapped from the OS */
  uint64_t committed_bytes;     /* mapped and not purged (an upper bound of RSS) */
  uint64_t in_use_bytes;        /* bytes in live blocks (block sizes, not requests) */
  uint64_t segments;            /* live segments (small, medium, span, large and huge) */
  uint64_t pages_in_use;        /* small and medium pages that hold blocks */
  uint64_t large_blocks;        /* live blocks above 64 KiB (spans and own segments) */
  uint64_t mmap_calls;          /* mappings made (including mremap) */
  uint64_t munmap_calls;        /* mappings released */
  uint64_t purged_bytes;        /* bytes returned with madvise over the lifetime */
  uint64_t remote_frees;        /* frees of blocks owned by another thread */
  uint64_t heaps_created;       /* thread heaps made */
  uint64_t heaps_abandoned;     /* thread heaps given up at thread exit or fork */
  uint64_t pages_adopted;       /* pages taken over from exited threads */
  uint64_t bad_frees;           /* invalid or double frees detected */
  uint64_t large_allocs;        /* blocks above 64 KiB made over the lifetime */
  uint64_t remaps;              /* huge blocks moved or resized with mremap */
  uint64_t purge_calls;         /* madvise calls that returned memory */
  uint64_t dirty_bytes;         /* free but still resident, decaying (at the last purge pass) */
  uint64_t background_ticks;    /* passes of the background worker */
  uint64_t prefill_pages;       /* pages built ahead of demand (predictor and am_prefill) */
  uint64_t prefill_used;        /* of the predictor's, pages a heap took */
  uint64_t prefill_released;    /* of the predictor's, pages given back unused */
  uint64_t prefill_ready_bytes; /* the predictor's reserve now: built, not yet taken */
  uint64_t defrag_moves;        /* blocks am_defrag_move moved */
  uint64_t swept_pages;         /* pages emptied by other threads' frees that the worker (or
                                   another thread's slow path) took from an owner that had
                                   stopped collecting them, and gave back */
  uint64_t meshed_pages;        /* AMALLOC_MESH: pages sharing physical memory with others now */
  uint64_t mesh_merges;         /* AMALLOC_MESH: pages merged onto another page's memory over the
                                   lifetime (each returned a page of memory to the OS) */
  uint64_t prefill_kept;        /* AMALLOC_PREDICT: pages kept whole after a burst as the reserve
                                   for the next one (counted in prefill_ready_bytes while kept) */
  uint64_t trimmed_bytes;       /* of purged_bytes, those inside the free blocks of sparse pages
                                   (pages a quarter live or less keep their survivors and give
                                   back the rest; see README, Fragmentation) */
} am_stats_t;

AM_API void am_stats_get(am_stats_t* out);

/* Counters of one size class (small and medium blocks, up to 64 KiB). */
typedef struct am_class_stats_s {
  uint64_t block_size;    /* bytes */
  uint64_t pages;         /* pages of the class holding blocks now (meshed ones included) */
  uint64_t blocks_live;   /* blocks handed out and not freed */
  uint64_t blocks_carved; /* blocks made in those pages so far (live and free) */
  uint64_t meshed_pages;  /* AMALLOC_MESH: of `pages`, those sharing memory now */
  uint64_t reserve_pages; /* AMALLOC_PREDICT: empty pages kept for the next burst now */
  uint64_t pages_cold;    /* pages heaps took that faulted in: the predictor's misses */
  uint64_t pages_ready;   /* pages heaps took that the worker had built ahead (hits) */
  uint64_t pages_reserve; /* pages heaps took from the burst reserve (hits) */
  uint64_t trimmed_bytes; /* given back from inside the free blocks of sparse pages */
} am_class_stats_t;
/* Fills out[0 .. max) with the size classes in order of block size and
 * returns how many classes there are (am_class_stats(NULL, 0) to ask). The
 * lifetime counters (pages_*, trimmed_bytes) count pages that went to a
 * heap's queue; a page taken back from an exited thread or from a free
 * slot still resident is in none of them. */
AM_API size_t am_class_stats(am_class_stats_t* out, size_t max);
/* A short human-readable report to stderr (what AMALLOC_STATS=1 prints at
 * exit). Never calls malloc. */
AM_API void am_stats_print(void);
/* The same counters as one line of JSON to stderr (AMALLOC_STATS=json). */
AM_API void am_stats_print_json(void);

#ifdef __cplusplus
}
#endif

#endif /* AMALLOC_AMALLOC_H */
