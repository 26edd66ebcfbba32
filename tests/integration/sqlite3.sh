#!/usr/bin/env bash
# sqlite3 under amalloc: 50k single-row INSERTs in one transaction (parser and
# page-cache churn), an index, deletes, VACUUM, integrity check.
source "$(dirname "$0")/common.sh"
need sqlite3 awk

ROWS=50000
{
  echo "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, val REAL, data BLOB);"
  echo "BEGIN;"
  awk -v n=$ROWS 'BEGIN { for (i = 1; i <= n; i++)
    printf "INSERT INTO t VALUES(%d, '\''name-%d-%s'\'', %d.25, zeroblob(%d));\n", i, (i * 7919) % n, substr("abcdefghijklmnopqrstuvwxyz", 1 + i % 26), i, i % 512 }'
  echo "COMMIT;"
  echo "CREATE INDEX t_name ON t(name);"
  echo "DELETE FROM t WHERE id % 3 = 0;"
  echo "VACUUM;"
  echo "PRAGMA integrity_check;"
  echo "SELECT count(*) FROM t;"
  echo "SELECT count(DISTINCT name), sum(length(data)), sum(val) FROM t;"
} >"$WORK/load.sql"

sqlite3 "$WORK/ref.db" <"$WORK/load.sql" >"$WORK/ref.txt" || fail "reference run (system malloc) failed"
am sqlite3 "$WORK/am.db" <"$WORK/load.sql" >"$WORK/am.txt" || fail "sqlite3 under amalloc exited with $?"
cat "$WORK/am.txt"
[[ $(sed -n 1p "$WORK/am.txt") == ok ]] || fail "PRAGMA integrity_check did not print ok"
[[ $(sed -n 2p "$WORK/am.txt") == $((ROWS - ROWS / 3)) ]] || fail "wrong row count"
diff "$WORK/ref.txt" "$WORK/am.txt" || fail "output differs from the system-malloc run"
# Read the amalloc-built database back with the system malloc.
[[ $(sqlite3 "$WORK/am.db" "PRAGMA integrity_check;") == ok ]] || fail "database written under amalloc is corrupt"
check_amalloc_used 1
echo PASS
