#!/usr/bin/env bash
# The long fault runs (`make chaos`): the fault suite of tests/faults.rs in its CHAOS=1 variant,
# built in release mode, with the shared services up (started and stopped again if needed):
#
# - consumer SIGKILLed 20 times at random moments over a 1,000,000-record stream on 3
#   partitions (exactly once; _late equal to an uninterrupted run's and to the design);
# - producer SIGKILLed and SIGINTed mid-file; PRIVATE broker crashed for 20 s during produce
#   and consume; PRIVATE MariaDB stopped during consume and at startup; output disk full;
#   damaged checkpoints; retention below the checkpoint (the same as in `make test`);
# - tests/consume_group.rs at 1,000,002 records (the consumer group under SIGKILL, churn,
#   a frozen member and a network cut).
#
# The private instance lives in .local/faults (Kafka 127.0.0.1:19092/19093, MariaDB :13306;
# RECLAMACOES_FAULTS_KAFKA_PORT, RECLAMACOES_FAULTS_KAFKA_CONTROLLER_PORT and
# RECLAMACOES_FAULTS_MYSQL_PORT move it, so that two checkouts can run this at once); the tests
# start it and stop what they started. The shared services are never stopped. The tests read
# the output back with DuckDB from .local/venv, which scripts/python-env.sh creates first.
#
# Optional: FUZZ_SECONDS=N also runs each cargo-fuzz target for N seconds (needs nightly and
# cargo-fuzz; see fuzz/README.md). CHAOS_FILTER=name runs only the matching fault tests.
#
# Exit status: that of the test run (and of the fuzz runs, when asked for).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '[chaos] %s\n' "$*" >&2; }

scripts/python-env.sh
started=$(date +%s)
log "fault suite, CHAOS=1, release build (1,000,000 records, 20 consumer SIGKILLs)"
CHAOS=1 scripts/with-services.sh cargo test --release --test faults -- \
  --test-threads=1 --nocapture ${CHAOS_FILTER:+"$CHAOS_FILTER"}
log "fault suite passed in $(( $(date +%s) - started )) s"

# The consumer-group suite at 1,000,002 records: SIGKILL + new member, churn (local and S3),
# a frozen member, a member cut off in its own network namespace (root).
started=$(date +%s)
log "consumer-group suite, CHAOS=1, release build (1,000,002 records over 6 partitions)"
CHAOS=1 S3=1 scripts/with-services.sh cargo test --release --test consume_group -- \
  --test-threads=1 --nocapture ${CHAOS_FILTER:+"$CHAOS_FILTER"}
log "consumer-group suite passed in $(( $(date +%s) - started )) s"

if [[ -n ${FUZZ_SECONDS:-} ]]; then
  for target in csv_rows json_message; do
    log "fuzzing $target for ${FUZZ_SECONDS} s"
    (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -jobs=1 -workers=1)
  done
fi
