#!/usr/bin/env bash
# By hand: compacting and vacuuming the Delta table (python deltalake) while `app consume`
# publishes to it. Not run by `make test` (it takes a minute of wall time and Python's deltalake
# as the other writer); its result is in BENCHMARKS.md / the CHANGELOG.
#
# Usage: make up && bench/compact-while-consuming.sh     (needs target/release/app, .local/venv)
#
# The fixtures are produced (80 rows, 2 partitions) 6 times, 6 s apart; a consumer started after
# the first runs continuously with 5 s windows; after the third, deltalake compacts the table and
# vacuums it while the consumer goes on. Then the consumer is stopped (SIGTERM: it flushes) and
# deltalake, polars and DuckDB read the table: every produced row once (partition, offset), and
# the consumer's log has no error.
#
# Result on 2026-12-06 (deltalake 1.6.6): the compaction fails before it writes anything,
# "File selection contains 4 missing files", on a running table and on a stopped copy alike: its
# optimize does not find files whose add path encodes the window directory's colons (%3A),
# which its reader and every other reader find. Vacuum works. See docs/consume.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
APP=${APP:-target/release/app}
PY=.local/venv/bin/python
WORK=${WORK:-/tmp/compact-while-consuming}
TOPIC=compact-$(date +%s)
ROUNDS=6
rm -rf "$WORK" && mkdir -p "$WORK"
OUT=$WORK/output

CONSUMER=
for round in $(seq 1 $ROUNDS); do
  "$APP" produce --topic "$TOPIC" --partitions 2 --rejects "$WORK/rejects" fixtures/ \
    >"$WORK/produce-$round.out" 2>&1
  if [[ -z $CONSUMER ]]; then # the topic exists now
    "$APP" consume --topic "$TOPIC" --output "$OUT" --window 5s --allowed-lateness 0s \
      --checkpoint-interval 1s >"$WORK/consume.out" 2>"$WORK/consume.err" &
    CONSUMER=$!
    trap 'kill $CONSUMER 2>/dev/null || true' EXIT
  fi
  sleep 6
  if [[ $round -eq 3 ]]; then
    "$PY" - "$OUT" <<'EOF'
import sys
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1])
before = len(dt.file_uris())
m = dt.optimize.compact()
dt = DeltaTable(sys.argv[1])
v = dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
print(f"compacted at version {dt.version()}: {before} files -> {len(dt.file_uris())}, "
      f"{m['numFilesRemoved']} removed, {m['numFilesAdded']} added; vacuum deleted {len(v)}")
EOF
  fi
done
sleep 8
kill -TERM $CONSUMER
wait $CONSUMER || { echo "consume exited with $?"; tail -20 "$WORK/consume.err"; exit 1; }
trap - EXIT

"$PY" - "$OUT" $((ROUNDS * 80)) <<'EOF'
import sys, os
import duckdb, polars as pl
from deltalake import DeltaTable
path, expected = sys.argv[1], int(sys.argv[2])
dt = DeltaTable(path)
t = dt.to_pyarrow_table(columns=["kafka_partition", "kafka_offset"])
keys = set(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
print(f"deltalake: version {dt.version()}, {t.num_rows} rows, {t.num_rows - len(keys)} duplicates, "
      f"{len(dt.file_uris())} files")
print("polars:", pl.read_delta(path).height, "rows")
con = duckdb.connect()
con.execute("LOAD delta")
print("duckdb:", con.sql(f"SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) "
                         f"FROM delta_scan('{path}')").fetchone())
ops = [h.get("operation") for h in dt.history()]
print("operations:", {o: ops.count(o) for o in set(ops)})
ok = t.num_rows == expected == len(keys)
print("OK" if ok else f"MISMATCH: expected {expected}")
sys.stdout.flush()
os._exit(0 if ok else 1)
EOF
echo "consumer errors and warnings:"
grep -E "ERROR|WARN" "$WORK/consume.err" | cut -c1-300 || echo "  none"
