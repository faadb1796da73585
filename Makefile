# Developer and CI entry points. Services: scripts/services.sh (Kafka 4.4 KRaft +
# MariaDB on 127.0.0.1, state under .local/; docker compose when a Docker engine answers).
SHELL := /bin/bash
.DEFAULT_GOAL := help

KAFKA_PORT ?= 9092
MYSQL_PORT ?= 3306
export KAFKA_PORT MYSQL_PORT

# Connection defaults for the pipeline, its tests and tools.
KAFKA_BROKERS ?= 127.0.0.1:$(KAFKA_PORT)
MYSQL_URL ?= mysql://reclamacoes:reclamacoes@127.0.0.1:$(MYSQL_PORT)/reclamacoes_db
export KAFKA_BROKERS MYSQL_URL

# What `make test` runs (with bash -c) once the services are up. Override:
#   make test TEST_CMD='cargo test --test pipeline'   ($VARS are left to the shell)
TEST_CMD ?= cargo test --all-targets -- --test-threads=2
unexport TEST_CMD

SERVICES := scripts/services.sh

.PHONY: help up down status seed load-bancos logs test fmt lint build python-env

help:
	@echo "make up | down | status | logs      local Kafka + MariaDB (127.0.0.1:$(KAFKA_PORT), :$(MYSQL_PORT))"
	@echo "make up S3=1                       also the local S3 server (versitygw, 127.0.0.1:7070; built once)"
	@echo "make seed                          reset table bancos to sql/seed.sql"
	@echo "make load-bancos FILE=x.tsv        replace table bancos with a Banco Central enquadramento file"
	@echo "make demo [DATA=dir] [BANCOS=x.tsv]  the whole pipeline on fixtures/ (or DATA), with a summary"
	@echo "make demo S3=1                     the same into s3://reclamacoes/demo/<run>/ on the local S3 server"
	@echo "make static                        static musl binary (target/static/app, stripped)"
	@echo "make test                          Python readers (.local/venv), start missing services, run TEST_CMD, stop what it started"
	@echo "make python-env                    create/update .local/venv (duckdb, pyarrow, pandas, polars; pinned)"
	@echo "make fmt | lint | build            cargo fmt / fmt --check + deps + links + clippy / build --release"
	@echo "make chaos                         long fault runs (CHAOS=1 tests/faults.rs and tests/consume_group.rs, release; FUZZ_SECONDS=N fuzzes too)"
	@echo "make bench | bench-quick           benchmarks vs kcat, Kafka perf tools, the seed's Python/PySpark (BENCHMARKS.md)"
	@echo "make bench-produce | bench-consume | bench-profile   one step (1M rows) / perf profile"
	@echo "make bench-group                   1 vs 3 consumer-group instances on one 6-partition topic"
	@echo "make bench-enrich                  full vs partial enrichment cache (a generated 10M-row dimension)"
	@echo "make bench-table                   the Delta table vs plain files (5M records), and the log after a day of commits"

up:
	@$(SERVICES) up

down:
	@$(SERVICES) down

status:
	@$(SERVICES) status

seed:
	@$(SERVICES) seed

load-bancos:
	@test -n "$(FILE)" || { echo "usage: make load-bancos FILE=path/to/enquadramento.tsv" >&2; exit 2; }
	@$(SERVICES) load-bancos "$(FILE)"

logs:
	@$(SERVICES) logs

# Creates/updates the tests' Python readers (.local/venv, scripts/python-env.sh; instant when
# current), starts only the services that are not running (always with the S3 server: S3=1),
# runs $(TEST_CMD), then stops exactly those it started (also on failure or Ctrl-C); exits with
# the test command's status.
test:
	@scripts/python-env.sh
	@S3=1 TEST_CMD='$(subst ','\'',$(value TEST_CMD))' scripts/with-services.sh

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	scripts/check-deps.sh
	scripts/check-links.sh
	cargo clippy --all-targets -- -D warnings

build:
	cargo build --release

# The pinned Python environment of the independent Parquet readers (.local/venv); test, chaos
# and demo run it themselves.
python-env:
	@scripts/python-env.sh

# --- Reserved for the pipeline owner (targets to be added here) -------------------
# Whole pipeline on fixtures/ (or DATA=dir|files|glob) into a new topic and demo-output/<run>/.
# BANCOS=file.tsv replaces table bancos with that enquadramento file (default: sql/seed.sql).
.PHONY: demo
demo:
	@DATA='$(DATA)' BANCOS='$(BANCOS)' scripts/demo.sh
# Benchmarks (BENCHMARKS.md): app vs kcat, Kafka's ProducerPerformance/ConsumerPerformance and
# the seed's kafka-python/PySpark design. scripts/bench.sh installs what it needs (bench venv,
# Spark jars, release build); services are started if missing and stopped afterwards.
# BENCH_ARGS passes options to bench/bench.py, e.g. BENCH_ARGS='--rows 200000'.
#   bench:          everything (1M rows side by side + scaling 100k/1M/5M, 1/3/6 partitions,
#                   ~20 min on 2 cores); writes bench/results/<date>.{md,json,png} and updates BENCHMARKS.md
#   bench-quick:    the same at 100k rows, scaling 1 and 3 partitions (a few minutes)
#   bench-produce:  produce step only, 1M rows (app produce vs kcat -P vs ProducerPerformance vs seed)
#   bench-consume:  consume step only, 1M rows (app consume vs ConsumerPerformance vs PySpark)
#   bench-profile:  perf CPU profile of app produce and app consume (200k rows)
#   bench-group:    1 vs 3 `app consume --group` instances on one 6-partition topic (1M rows)
#   bench-enrich:   full vs partial enrichment cache, small dimension and a generated 10M-row one
#   bench-table:    --table delta vs --table none at 5M records (1 and 3 partitions), and how
#                   fast the Delta table opens after a day of commits (with and without checkpoints)
.PHONY: bench bench-quick bench-produce bench-consume bench-profile bench-group bench-enrich bench-table
bench:
	@scripts/with-services.sh scripts/bench.sh full $(BENCH_ARGS)
bench-quick:
	@scripts/with-services.sh scripts/bench.sh quick $(BENCH_ARGS)
bench-enrich:
	@scripts/with-services.sh scripts/bench.sh enrich $(BENCH_ARGS)
bench-table:
	@scripts/with-services.sh scripts/bench.sh table $(BENCH_ARGS)
bench-produce:
	@scripts/with-services.sh scripts/bench.sh produce $(BENCH_ARGS)
bench-consume:
	@scripts/with-services.sh scripts/bench.sh consume $(BENCH_ARGS)
bench-group:
	@scripts/with-services.sh scripts/bench.sh group $(BENCH_ARGS)
bench-profile:
	@scripts/with-services.sh scripts/bench.sh profile $(BENCH_ROWS)
# Fully static binary: target/x86_64-unknown-linux-musl/dist/app (installs the musl target
# and musl-tools when missing; checks it with file/ldd; prints its size).
.PHONY: static
static:
	@scripts/static.sh
# Long fault runs (scripts/chaos.sh): tests/faults.rs with CHAOS=1 in release mode, e.g. 20
# consumer SIGKILLs over 1,000,000 records; FUZZ_SECONDS=N also runs both fuzz targets N s each.
.PHONY: chaos
chaos:
	@FUZZ_SECONDS='$(FUZZ_SECONDS)' CHAOS_FILTER='$(CHAOS_FILTER)' scripts/chaos.sh
# -----------------------------------------------------------------------------------
