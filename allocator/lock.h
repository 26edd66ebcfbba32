// The one global lock of the slow paths (segments, page slots, the
// abandoned lists, the heap registry). pthread mutexes never allocate.
#pragma once
#include <pthread.h>

namespace am {

extern pthread_mutex_t g_lock;

struct LockGuard {
  LockGuard() { pthread_mutex_lock(&g_lock); }
  ~LockGuard() { pthread_mutex_unlock(&g_lock); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;
};

}  // namespace am
