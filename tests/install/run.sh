#!/usr/bin/env bash
# Installs the current build tree into a temporary prefix, then builds a
# consumer against it with find_package (shared, static and core targets)
# and with pkg-config, and runs every binary.
# Usage: run.sh <build dir> <C++ compiler> <version>
set -euo pipefail
build=${1:?build dir} cxx=${2:?C++ compiler} version=${3:?version}
here=$(cd "$(dirname "$0")" && pwd)
unset LD_PRELOAD

work=$(mktemp -d "${TMPDIR:-/tmp}/amalloc-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
step() { echo; echo "== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

step "cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; fail "install"; }
sed 's/^/  /' "$work/install.log"

step "find_package(amalloc) consumer"
cmake -S "$here/consumer" -B "$work/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$prefix" || fail "configure consumer"
grep -q "^amalloc_DIR:PATH=$prefix/" "$work/consumer/CMakeCache.txt" || fail "the package was not found in $prefix"
cmake --build "$work/consumer" -j "$(nproc)" || fail "build consumer"

bin=$work/consumer
# Outputs are captured before grep: grep -q quitting early would kill the
# writer with SIGPIPE, and pipefail would turn a match into a failure.
deps=$(ldd "$bin/consumer_shared")
grep -q "$prefix/.*libamalloc.so" <<<"$deps" || { echo "$deps"; fail "consumer_shared does not load the installed libamalloc.so"; }
for b in consumer_static probe_static consumer_core; do
  deps=$(ldd "$bin/$b")
  if grep -q libamalloc <<<"$deps"; then fail "$b depends on libamalloc.so"; fi
done
"$bin/consumer_shared" override || fail "consumer_shared (amalloc::amalloc)"
"$bin/consumer_static" override || fail "consumer_static (amalloc::amalloc_static)"
"$bin/probe_static" || fail "probe_static: amalloc::amalloc_static does not link the whole archive"
"$bin/consumer_core" core || fail "consumer_core (amalloc::core)"
report=$(AMALLOC_STATS=1 "$bin/consumer_static" override 2>&1 >/dev/null)
grep -q "amalloc $version" <<<"$report" || fail "no amalloc $version stats report from consumer_static"

step "pkg-config consumer"
PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name amalloc.pc)")
export PKG_CONFIG_PATH
[[ $(pkg-config --modversion amalloc) == "$version" ]] || fail "pkg-config --modversion"
echo "  cflags/libs: $(pkg-config --cflags --libs amalloc)"
libdir=$(pkg-config --variable=libdir amalloc)
# shellcheck disable=SC2046  # word splitting of pkg-config output is intended
"$cxx" -std=c++17 "$here/consumer/main.cpp" -o "$work/pc_shared" $(pkg-config --cflags --libs amalloc) \
  -Wl,-rpath,"$libdir" || fail "compile with pkg-config --cflags --libs amalloc"
"$work/pc_shared" override || fail "pc_shared"
# The static variant the .pc file documents.
# shellcheck disable=SC2046
"$cxx" -std=c++17 "$here/consumer/probe.cpp" -o "$work/pc_static" $(pkg-config --cflags amalloc) \
  $(pkg-config --variable=static_libs amalloc) || fail "compile with pkg-config static_libs"
"$work/pc_static" || fail "pc_static"

echo; echo PASS
