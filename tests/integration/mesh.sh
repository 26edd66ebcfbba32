#!/usr/bin/env bash
# python3 under amalloc with AMALLOC_MESH=1: a fragmented heap is meshed
# while the program runs, then the program forks and writes into its kept
# blocks; every checksum must equal a run under the system malloc (the
# child must not see the parent's writes), and amalloc must have meshed.
source "$(dirname "$0")/common.sh"
PY=/usr/bin/python3
[[ -x $PY ]] || { need python3; PY=$(command -v python3); }
script=$(dirname "$0")/python_mesh.py

"$PY" "$script" >"$WORK/ref.txt" || fail "reference run (system malloc) failed"
AMALLOC_MESH=1 am "$PY" "$script" >"$WORK/am.txt" || fail "python3 under amalloc exited with $?"
cat "$WORK/am.txt"
diff "$WORK/ref.txt" "$WORK/am.txt" || fail "output differs from the system-malloc run"
check_amalloc_used 1  # the child leaves with os._exit: no report
grep -E '^ *mesh: .*[1-9][0-9]* merges' "$AM_STDERR" || fail "no page was meshed"
echo PASS
