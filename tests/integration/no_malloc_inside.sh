#!/usr/bin/env bash
# The engine must never call malloc (directly or through libstdc++, stdio,
# dlsym, std::thread or exceptions): every symbol the engine's objects take
# from outside must be on this list of libc calls that do not allocate.
# usage: no_malloc_inside.sh path/to/libamalloc_core.a
# One exception is allowed by design: pthread_create, which starts the
# background worker from a slow path with no lock held. glibc allocates the
# new thread's DTV with calloc there; that call re-enters amalloc as an
# ordinary allocation, since the worker's state already says "starting".
set -euo pipefail
archive=${1:?usage: $0 libamalloc_core.a}
allowed='^(_IO_list_lock|_IO_list_resetlock|_IO_list_unlock|__errno_location|__popcountdi2|abort|clock_getres|clock_gettime|close|environ|fallocate|fcntl|fstat|fstat64|__fstat64|ftruncate|getpid|lseek|madvise|mprotect|pwrite|sigaction|sigdelset|sigemptyset|memcpy|memmove|memset|mmap|mremap|munmap|nanosleep|open|read|pthread_atfork|pthread_attr_destroy|pthread_attr_init|pthread_attr_setstacksize|pthread_create|pthread_join|pthread_getschedparam|pthread_setname_np|pthread_setschedparam|pthread_sigmask|sigfillset|pthread_key_create|pthread_mutex_init|pthread_mutex_lock|pthread_mutex_trylock|pthread_mutex_unlock|pthread_once|pthread_self|pthread_setspecific|sched_yield|syscall|write|_GLOBAL_OFFSET_TABLE_)$'
defined=$(nm --defined-only "$archive" | awk 'NF == 3 { print $3 }' | sort -u)
undefined=$(nm -u "$archive" | awk 'NF == 2 && $1 == "U" { print $2 }' | sort -u)
external=$(comm -23 <(echo "$undefined") <(echo "$defined"))
bad=$(echo "$external" | grep -Ev "$allowed" | grep -Ev '^__(asan|tsan|ubsan|sanitizer)_' || true)
if [[ -n $bad ]]; then
  echo "FAIL: the engine references symbols outside the no-allocation list:" >&2
  echo "$bad" | sed 's/^/  /' >&2
  exit 1
fi
echo "engine calls only: $(echo "$external" | grep -Ev '^_GLOBAL' | tr '\n' ' ')"
echo PASS
