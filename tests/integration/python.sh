#!/usr/bin/env bash
# python3 under amalloc: threads build and free dicts, lists and strings; the
# result must equal a run under the system malloc.
source "$(dirname "$0")/common.sh"
# The distribution's interpreter, not a pyenv-style shim script.
PY=/usr/bin/python3
[[ -x $PY ]] || { need python3; PY=$(command -v python3); }
script=$(dirname "$0")/python_threads.py

"$PY" "$script" >"$WORK/ref.txt" || fail "reference run (system malloc) failed"
am "$PY" "$script" >"$WORK/am.txt" || fail "python3 under amalloc exited with $?"
cat "$WORK/am.txt"
grep -q '^am_owns(large object) = 1$' "$WORK/am.txt" || fail "am_owns check did not run"
grep -v '^am_owns' "$WORK/am.txt" | diff "$WORK/ref.txt" - || fail "output differs from the system-malloc run"
check_amalloc_used 1
echo PASS
