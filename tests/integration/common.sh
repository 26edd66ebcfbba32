# Helpers shared by the integration tests. Sourced, never run directly.
# Every test script is called as: bash <script> <path/to/libamalloc.so> <version>
set -euo pipefail

AMALLOC_LIB=${1:?usage: $0 <libamalloc.so> <version>}
AMALLOC_VERSION=${2:?usage: $0 <libamalloc.so> <version>}
[[ -f $AMALLOC_LIB ]] || { echo "FAIL: no library at $AMALLOC_LIB" >&2; exit 1; }
# The reference runs must use the system malloc, whatever the caller's shell has.
unset LD_PRELOAD AMALLOC_STATS
# Fixed locale: sort order and program messages must not depend on the host.
export LC_ALL=C

WORK=$(mktemp -d "${TMPDIR:-/tmp}/amalloc-it.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
AM_STDERR=$WORK/amalloc-stderr.log
: >"$AM_STDERR"

# ctest reports exit code 77 as "skipped" (SKIP_RETURN_CODE): a missing tool
# is not an allocator failure. scripts/test installs all of them.
need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
  done
}

fail() {
  echo "FAIL: $*" >&2
  echo "---- last 40 lines of stderr under amalloc ($AM_STDERR) ----" >&2
  tail -n 40 "$AM_STDERR" >&2 || true
  exit 1
}

# am CMD...: run CMD with amalloc preloaded and the exit report switched on.
# stderr (the programs' own and amalloc's reports) is collected in $AM_STDERR
# so that stdout stays the program's real output.
am() {
  LD_PRELOAD=$AMALLOC_LIB AMALLOC_STATS=1 "$@" 2>>"$AM_STDERR"
}

# Proves amalloc was the allocator: each process it served prints a report at
# exit whose first line names "amalloc <version>".
check_amalloc_used() {
  local n
  n=$(grep -c "amalloc $AMALLOC_VERSION" "$AM_STDERR" || true)
  [[ $n -ge ${1:-1} ]] || fail "expected at least ${1:-1} amalloc $AMALLOC_VERSION report(s) in stderr, found $n"
  echo "amalloc reports seen: $n"
  # The report's "frees:" line counts invalid and double frees amalloc caught.
  if grep -E '^ *frees:.*[^0-9][1-9][0-9]* invalid' "$AM_STDERR"; then fail "amalloc reported invalid frees"; fi
}
