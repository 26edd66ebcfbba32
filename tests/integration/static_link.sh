#!/usr/bin/env bash
# Static-link test. Two forms:
#   static_link.sh <libamalloc.a> <version> <include dir>
#       compiles static_link/main.cpp and links it with exactly the line the
#       README shows, then runs it:
#       g++ main.o -Wl,--whole-archive libamalloc.a -Wl,--no-whole-archive -lpthread
#   static_link.sh <program> <version>
#       runs a program CMake linked the same way.
# Either way the program runs without LD_PRELOAD, must pass its own checks,
# must not load libamalloc.so, and must print amalloc's exit report.
source "$(dirname "$0")/common.sh"
prog=$1

if [[ $# -ge 3 ]]; then
  need g++
  src=$(cd "$(dirname "$0")" && pwd)/static_link/main.cpp
  cp "$1" "$WORK/libamalloc.a"
  cd "$WORK"
  g++ -std=c++17 -O2 -I"$3" -c "$src" -o main.o || fail "compile"
  g++ main.o -Wl,--whole-archive libamalloc.a -Wl,--no-whole-archive -lpthread -o prog || fail "link"
  prog=$WORK/prog
fi

# Captured first: grep -q quitting early would fail ldd with SIGPIPE (pipefail).
deps=$(ldd "$prog")
if grep -q libamalloc <<<"$deps"; then fail "$prog depends on libamalloc.so"; fi
AMALLOC_STATS=1 "$prog" 2>>"$AM_STDERR" || fail "$prog exited with $?"
check_amalloc_used 1
echo PASS
