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

.PHONY: help up down status seed load-bancos logs test fmt lint build

help:
	@echo "make up | down | status | logs      local Kafka + MariaDB (127.0.0.1:$(KAFKA_PORT), :$(MYSQL_PORT))"
	@echo "make seed                          reset table bancos to sql/seed.sql"
	@echo "make load-bancos FILE=x.tsv        replace table bancos with a Banco Central enquadramento file"
	@echo "make test                          start missing services, run TEST_CMD, stop what it started"
	@echo "make fmt | lint | build            cargo fmt / fmt --check + clippy / build --release"

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

# Starts only the services that are not running, runs $(TEST_CMD), then stops exactly
# those it started (also on failure or Ctrl-C); exits with the test command's status.
test:
	@TEST_CMD='$(subst ','\'',$(value TEST_CMD))' scripts/with-services.sh

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	scripts/check-deps.sh
	cargo clippy --all-targets -- -D warnings

build:
	cargo build --release

# --- Reserved for the pipeline owner (targets to be added here) -------------------
# demo:           run the pipeline end to end on fixtures/ or $RECLAMACOES_DATA_DIR
# bench:          all benchmarks
# bench-produce:  Kafka produce throughput (org.apache.kafka.tools.ProducerPerformance
#                 is in .local/kafka/libs: java -cp '.local/kafka/libs/*' ...)
# bench-consume:  Kafka consume throughput (org.apache.kafka.tools.ConsumerPerformance)
# static:         static checks beyond lint
# -----------------------------------------------------------------------------------
