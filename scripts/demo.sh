#!/usr/bin/env bash
# The whole pipeline in one command (`make demo`), on a fresh machine, with or without Docker:
#   1. start Kafka + MariaDB if they are not running (scripts/services.sh up)
#   2. the Python readers: .local/venv with pinned duckdb and pyarrow (scripts/python-env.sh;
#      instant when current)
#   3. build the release binary (cargo build --release)
#   4. (re)load table bancos: sql/seed.sql, or BANCOS=file.tsv (an enquadramento file)
#   5. app produce: DATA (default fixtures/) -> a new topic demo-<timestamp>
#   6. app consume --until-caught-up --close-windows: that topic -> demo-output/<run>/ (1-minute
#      windows; the end of the topic is the end of the stream, so every window closes)
#   7. app inspect on the output, a summary with the commands to query it with DuckDB and
#      pyarrow, and those commands run with .local/venv/bin/python (independent readers)
# Every run uses its own topic and output directory, so it can be repeated as is.
#
# With S3=1 (`make demo S3=1`) the output goes to the local S3 server instead (scripts/s3.sh:
# versitygw on 127.0.0.1:7070, built once): s3://reclamacoes/demo/<run>/, read back with
# DuckDB's httpfs and pyarrow's S3 filesystem; logs stay in demo-output/<run>/_logs.
#
# Environment: DATA (CSV files, a directory or a glob; default fixtures), BANCOS (TSV that
# REPLACES the shared table bancos; default: reset it to sql/seed.sql), DEMO_PARTITIONS (3),
# DEMO_WINDOW (1m), KAFKA_BROKERS, MYSQL_URL, KAFKA_PORT, MYSQL_PORT (as in the Makefile).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CALLER_DIR=$PWD
cd "$ROOT"

DATA=${DATA:-fixtures}
BANCOS=${BANCOS:-}
# Relative paths are relative to where the script was started (make runs it from the repo root).
if [[ $CALLER_DIR != "$ROOT" ]]; then
  [[ $DATA == /* ]] || DATA=$CALLER_DIR/$DATA
  [[ -z $BANCOS || $BANCOS == /* ]] || BANCOS=$CALLER_DIR/$BANCOS
fi
PARTITIONS=${DEMO_PARTITIONS:-3}
WINDOW=${DEMO_WINDOW:-1m}
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
export MYSQL_URL=${MYSQL_URL:-mysql://reclamacoes:reclamacoes@127.0.0.1:${MYSQL_PORT:-3306}/reclamacoes_db}
RUN=demo-$(date -u +%Y%m%d-%H%M%S)-$(printf '%04x' $((RANDOM)))
TOPIC=$RUN
LOCAL_OUT=demo-output/$RUN
LOGS=$LOCAL_OUT/_logs
S3=${S3:-0}
if [[ $S3 == 1 ]]; then
  OUT=s3://reclamacoes/demo/$RUN/
  eval "$(scripts/s3.sh env | grep '^export')"
  S3_HOST=${AWS_ENDPOINT_URL#http://}
else
  OUT=$LOCAL_OUT
fi
APP=$ROOT/target/release/app
PYTHON=${LOCAL_DIR:-$ROOT/.local}/venv/bin/python

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
T0=$(now)
STEP_T0=$T0
STEP=0
STEPS=7
step() {
  if ((STEP > 0)); then printf '    done in %s s\n' "$(elapsed "$STEP_T0")"; fi
  STEP=$((STEP + 1))
  STEP_T0=$(now)
  printf '\n==> [%d/%d] %s\n' "$STEP" "$STEPS" "$*"
}
die() {
  printf '\n[demo] ERROR: %s\n' "$*" >&2
  printf '[demo] run %s stopped after %s s\n' "$RUN" "$(elapsed "$T0")" >&2
  exit 1
}
# show_log FILE: the end of a log, for failures.
show_log() { [[ -f $1 ]] && { echo "--- last lines of $1:" >&2; tail -n 25 "$1" >&2; }; }
# field FILE LABEL: the value after "  LABEL: " in a summary.
field() { sed -n "s/^  $2: //p" "$1" | head -n 1; }

printf '[demo] run %s: %s -> Kafka topic %s -> %s\n' "$RUN" "$DATA" "$TOPIC" "$OUT"
[[ -e $DATA ]] || compgen -G "$DATA" >/dev/null || die "DATA=$DATA: no such file, directory or glob match"
if [[ -n $BANCOS && ! -r $BANCOS ]]; then die "BANCOS=$BANCOS: cannot read that file"; fi

step "services: Kafka on $KAFKA_BROKERS and MariaDB$([[ $S3 == 1 ]] && echo ", S3 on $AWS_ENDPOINT_URL") (scripts/services.sh up: starts only what is not running)"
scripts/services.sh up || die "the local services did not start (see the messages above; \`make logs\` lists the log files)"

step "Python readers: ${PYTHON#"$ROOT"/} with duckdb and pyarrow (scripts/python-env.sh)"
scripts/python-env.sh || die "the Python environment of the readers could not be made (see the message above)"

step "build: cargo build --release --bin app"
command -v cargo >/dev/null 2>&1 ||
  die "cargo is not installed. Install Rust with rustup (https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), then rerun make demo"
cargo build --release --bin app || die "the release build failed (compiler output above)"

if [[ -n $BANCOS ]]; then
  step "enrichment table: replacing table bancos with $BANCOS (scripts/services.sh load-bancos)"
  scripts/services.sh load-bancos "$BANCOS" || die "loading $BANCOS into table bancos failed"
else
  step "enrichment table: resetting table bancos to sql/seed.sql (scripts/services.sh seed)"
  scripts/services.sh seed || die "loading sql/seed.sql into table bancos failed"
fi

mkdir -p "$LOGS"
step "produce: app produce $DATA -> topic $TOPIC ($PARTITIONS partitions)"
echo "    $ target/release/app produce --topic $TOPIC --partitions $PARTITIONS --rejects $LOCAL_OUT/_rejects $DATA"
# shellcheck disable=SC2086  # DATA may be a glob
if ! "$APP" produce --topic "$TOPIC" --partitions "$PARTITIONS" --rejects "$LOCAL_OUT/_rejects" $DATA \
    >"$LOGS/produce-summary.txt" 2>"$LOGS/produce.log"; then
  cat "$LOGS/produce-summary.txt"
  show_log "$LOGS/produce.log"
  die "app produce failed"
fi
sed 's/^/    /' "$LOGS/produce-summary.txt"

step "consume: app consume --until-caught-up --close-windows, $WINDOW windows, enrichment from MySQL -> $OUT"
echo "    $ target/release/app consume --topic $TOPIC --output $OUT --window $WINDOW --until-caught-up --close-windows"
if ! "$APP" consume --topic "$TOPIC" --output "$OUT" --window "$WINDOW" --until-caught-up --close-windows \
    >"$LOGS/consume-summary.txt" 2>"$LOGS/consume.log"; then
  cat "$LOGS/consume-summary.txt"
  show_log "$LOGS/consume.log"
  die "app consume failed"
fi
sed 's/^/    /' "$LOGS/consume-summary.txt"

step "inspect: app inspect $OUT"
"$APP" inspect "$OUT" | tee "$LOGS/inspect.txt" | sed 's/^/    /' || die "app inspect failed"
"$APP" inspect --json --sample 0 "$OUT" >"$LOGS/inspect.json" || die "app inspect --json failed"
printf '    done in %s s\n' "$(elapsed "$STEP_T0")"

# --- summary ------------------------------------------------------------------------------
P=$LOGS/produce-summary.txt
C=$LOGS/consume-summary.txt
windows_line=$(sed -n 's/^windows: //p' "$LOGS/inspect.txt" | head -n 1)
GLOB="${OUT%/}/**/*.parquet"
ENRICH_HINT=
if [[ -z $BANCOS && $(field "$C" enrichment) == "0 hits"* ]]; then
  ENRICH_HINT=$'\n                  no hits: table bancos holds the fictional seed that matches fixtures/; with the real\n                  data, also load the real table: make demo DATA=... BANCOS=.../EnquadramentoInicia_v2.tsv'
fi

# ==== Independent readers: DuckDB, pyarrow and pandas (the ONE place for them) ====
# Plain calls, as a user writes them: the output directory is one table (only the table's files
# end in .parquet; _late, _dead_letter, _staging and _checkpoint are skipped by every reader).
# The summary prints these commands and the run ends by executing them, exactly as printed,
# with .local/venv/bin/python (step 2). A change of the output layout or of the read calls is
# made here only.
PY_SHOWN=${PYTHON#"$ROOT"/}
DUCKDB_SQL="SELECT banco_segmento, count(*) AS linhas, sum(quantidade_total_de_reclamacoes) AS reclamacoes FROM read_parquet('$GLOB', hive_partitioning = true) GROUP BY ALL ORDER BY banco_segmento NULLS LAST"
DUCKDB_PY="import sys, duckdb; duckdb.sql(sys.argv[1]).show()"
PYARROW_PY="import pyarrow.parquet as pq; t = pq.read_table('$OUT'); print(t.num_rows, 'rows,', t.num_columns, 'columns; window_start:', t.schema.field('window_start').type)"
PANDAS_PY="import pandas; df = pandas.read_parquet('$OUT'); print(len(df), 'rows; window_start:', df['window_start'].dtype); print(df.groupby('window_start').size().to_string())"
# The Delta table (the same files, through the log in _delta_log/): snapshots, time travel.
DELTA_URI=${OUT%/}
DELTA_OPTS=
# After a read, delta-rs can abort the interpreter at its exit ("terminate called without an
# active exception", delta-io/delta-rs#2184; seen locally and from S3): leave without the
# interpreter's shutdown.
DELTA_EXIT="; import os, sys; sys.stdout.flush(); os._exit(0)"
DUCKDB_DELTA_SETUP="con.execute('LOAD delta')"
if [[ $S3 == 1 ]]; then
  DELTA_OPTS=", storage_options={'AWS_ENDPOINT_URL': 'http://$S3_HOST', 'AWS_ALLOW_HTTP': 'true', 'AWS_REGION': 'us-east-1'}"
  DUCKDB_DELTA_SETUP="con.execute('LOAD delta'); con.execute('LOAD httpfs'); con.execute(f\"CREATE SECRET (TYPE s3, KEY_ID '{os.environ['AWS_ACCESS_KEY_ID']}', SECRET '{os.environ['AWS_SECRET_ACCESS_KEY']}', ENDPOINT '$S3_HOST', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')\")"
fi
DELTALAKE_PY="import deltalake; dt = deltalake.DeltaTable('$DELTA_URI'$DELTA_OPTS); t = dt.to_pyarrow_table(); print(f'version {dt.version()}: {t.num_rows} rows in {len(dt.file_uris())} files'); [print(f\"  version {h['version']}: {h['operation']}\") for h in sorted(dt.history(), key=lambda h: h['version'])]$DELTA_EXIT"
POLARS_DELTA_PY="import polars as pl; df = pl.read_delta('$DELTA_URI'$DELTA_OPTS); print(df.height, 'rows'); print(df.group_by('window_start').len().sort('window_start'))$DELTA_EXIT"
DUCKDB_DELTA_SQL="SELECT banco_segmento, count(*) AS linhas, sum(quantidade_total_de_reclamacoes) AS reclamacoes FROM delta_scan('$DELTA_URI') GROUP BY ALL ORDER BY banco_segmento NULLS LAST"
DUCKDB_DELTA_PY="import os, sys, duckdb, duckdb_ext; con = duckdb.connect(); con.execute('SET extension_directory = ?', [os.path.join(list(duckdb_ext.__path__)[0], 'extensions')]); $DUCKDB_DELTA_SETUP; con.sql(sys.argv[1]).show()"
if [[ $S3 == 1 ]]; then
  # The same reads straight from the S3 server; credentials from the AWS_* variables that
  # `scripts/s3.sh env` prints (eval it in your shell first).
  S3_PATH=${OUT#s3://}
  DUCKDB_PY="import os, sys, duckdb, duckdb_ext; con = duckdb.connect(); con.execute('SET extension_directory = ?', [os.path.join(list(duckdb_ext.__path__)[0], 'extensions')]); con.execute('LOAD httpfs'); con.execute(f\"CREATE SECRET (TYPE s3, KEY_ID '{os.environ['AWS_ACCESS_KEY_ID']}', SECRET '{os.environ['AWS_SECRET_ACCESS_KEY']}', ENDPOINT '$S3_HOST', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')\"); con.sql(sys.argv[1]).show()"
  S3FS="pafs.S3FileSystem(endpoint_override='$S3_HOST', scheme='http', region='us-east-1')"
  PYARROW_PY="import pyarrow.fs as pafs, pyarrow.parquet as pq; t = pq.read_table('${S3_PATH%/}', filesystem=$S3FS); print(t.num_rows, 'rows,', t.num_columns, 'columns; window_start:', t.schema.field('window_start').type)"
  PANDAS_PY="import pandas, pyarrow.fs as pafs; df = pandas.read_parquet('${S3_PATH%/}', filesystem=$S3FS); print(len(df), 'rows; window_start:', df['window_start'].dtype); print(df.groupby('window_start').size().to_string())"
fi
run_readers() {
  echo
  echo "Independent readers, run now (proof that other tools read the files):"
  echo "  DuckDB $("$PYTHON" -c 'import duckdb; print(duckdb.__version__)'):"
  "$PYTHON" -c "$DUCKDB_PY" "$DUCKDB_SQL" | sed 's/^/    /' || die "the DuckDB query failed (command above)"
  echo "  pyarrow $("$PYTHON" -c 'import pyarrow; print(pyarrow.__version__)'):"
  "$PYTHON" -c "$PYARROW_PY" | sed 's/^/    /' || die "the pyarrow read failed (command above)"
  echo "  pandas $("$PYTHON" -c 'import pandas; print(pandas.__version__)'):"
  "$PYTHON" -c "$PANDAS_PY" | sed 's/^/    /' || die "the pandas read failed (command above)"
  echo
  echo "The Delta table, run now (what Delta readers see: whole commits, each file once):"
  echo "  deltalake $("$PYTHON" -c 'import deltalake; print(deltalake.__version__)'):"
  "$PYTHON" -c "$DELTALAKE_PY" | sed 's/^/    /' || die "the deltalake read failed (command above)"
  echo "  polars.read_delta:"
  "$PYTHON" -c "$POLARS_DELTA_PY" | sed 's/^/    /' || die "the polars read_delta failed (command above)"
  echo "  DuckDB delta_scan:"
  "$PYTHON" -c "$DUCKDB_DELTA_PY" "$DUCKDB_DELTA_SQL" | sed 's/^/    /' || die "the DuckDB delta_scan query failed (command above)"
}
# =============================================================================================

cat <<EOF

==================================== demo summary ====================================
run:              $RUN
input:            $DATA (files: $(field "$P" files))
kafka topic:      $TOPIC ($PARTITIONS partitions on $KAFKA_BROKERS)
rows produced:    $(field "$P" "rows sent (acknowledged)")
rejects:          $(field "$P" "rows rejected")   (rows of the CSV that could not be parsed)
rows read:        $(field "$C" "records read")
rows written:     $(field "$C" "rows written")
windows:          $windows_line
enrichment:       $(field "$C" enrichment)   (misses: no CNPJ, or one not in table bancos; bank columns stay null)${ENRICH_HINT}
late rows:        $(field "$C" "late rows")
dead letters:     $(field "$C" "dead letters")
output:           ${OUT%/}/   (a Delta table: _delta_log/ lists window=*/part-*.parquet; logs and summaries in $LOGS/)
total time:       $(elapsed "$T0") s

Query the files (.local/venv has duckdb, pyarrow, pandas and polars; scripts/python-env.sh makes it)$([[ $S3 == 1 ]] && printf ',\n  after: eval "$(scripts/s3.sh env)"'):
  DuckDB:
    $PY_SHOWN -c "$DUCKDB_PY" "$DUCKDB_SQL"
    (or with the DuckDB CLI: duckdb -c "$DUCKDB_SQL")
  pyarrow:
    $PY_SHOWN -c "$PYARROW_PY"
  pandas:
    $PY_SHOWN -c "$PANDAS_PY"
  polars:   polars.scan_parquet('${OUT%/}/**/*.parquet', hive_partitioning=True).collect()
  Spark:    spark.read.parquet('$OUT')
  (the table is every *.parquet file; late rows and dead letters are .pq files in _late/ and _dead_letter/)

Read it as a Delta table (snapshots; time travel with version=N):
  deltalake:
    $PY_SHOWN -c "$DELTALAKE_PY"
  polars:
    $PY_SHOWN -c "$POLARS_DELTA_PY"
  DuckDB (delta extension):
    $PY_SHOWN -c "$DUCKDB_DELTA_PY" "$DUCKDB_DELTA_SQL"
  Spark:    spark.read.format('delta').load('$OUT')   (delta-spark)
  Look again later: target/release/app inspect $OUT   (add --json for scripts)
EOF

run_readers
echo
echo "[demo] run $RUN finished in $(elapsed "$T0") s"
