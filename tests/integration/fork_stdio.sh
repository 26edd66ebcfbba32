#!/usr/bin/env bash
# fork() with AMALLOC_MESH=1 while other threads use stdio and pthread keys
# whose data glibc keeps in the heap (see fork_stdio/main.c), under
# LD_PRELOAD. Called with the library, the version and the test program.
source "$(dirname "$0")/common.sh"
prog=${3:?usage: $0 <libamalloc.so> <version> <fork_stdio program>}
AMALLOC_MESH=1 timeout 300 env LD_PRELOAD="$AMALLOC_LIB" AMALLOC_STATS=1 "$prog" 100 \
  2>>"$AM_STDERR" || fail "fork_stdio exited with $?"
check_amalloc_used 1
echo PASS
