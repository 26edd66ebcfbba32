#!/usr/bin/env bash
# run_tiny.sh LIBRARY PROGRAM [ARGS...]
#
# Runs a workload program once with --size tiny under LD_PRELOAD=LIBRARY
# (time-out 60 s) and passes only if it exits 0 and prints an AMBENCH line
# with "checksum_ok":true. Used by the CTest tests of label "workloads".
set -u
if [[ $# -lt 2 ]]; then
  echo "usage: $0 LIBRARY PROGRAM [ARGS...]" >&2
  exit 2
fi
lib=$1
prog=$2
shift 2

out=$(timeout 60 env LD_PRELOAD="$lib" "$prog" --size tiny "$@")
status=$?
echo "$out"
if [[ $status -ne 0 ]]; then
  echo "FAIL: $prog exited with status $status (124 = time-out)" >&2
  exit 1
fi
line=$(grep '^AMBENCH ' <<<"$out")
if [[ -z $line ]]; then
  echo "FAIL: $prog printed no AMBENCH line" >&2
  exit 1
fi
if [[ $(grep -c '^AMBENCH ' <<<"$out") -ne 1 ]]; then
  echo "FAIL: $prog printed more than one AMBENCH line" >&2
  exit 1
fi
if ! grep -q '"checksum_ok":true' <<<"$line"; then
  echo "FAIL: $prog: checksum_ok is not true" >&2
  exit 1
fi
exit 0
