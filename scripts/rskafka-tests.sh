#!/usr/bin/env bash
# Runs the vendored rskafka's own unit tests (`cargo test --lib` of vendor/rskafka; extra
# arguments go to cargo, e.g. `scripts/rskafka-tests.sh init_producer_id`).
#
# The vendored crate has no dev-dependencies (vendor/README.md) and is not a workspace member,
# so `cargo test -p rskafka` cannot build its tests. This copies it to
# target/rskafka-tests/rskafka, gives the copy upstream's three dev-dependencies of its unit
# tests (proptest, proptest-derive, assert_matches) and a workspace of its own, pins the other
# versions with our Cargo.lock, and runs its tests there. Nothing in the repository changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
dir=${CARGO_TARGET_DIR:-$root/target}/rskafka-tests
rm -rf "$dir/rskafka"
mkdir -p "$dir"
cp -r vendor/rskafka "$dir/rskafka"
cp Cargo.lock "$dir/rskafka/Cargo.lock"
cat >>"$dir/rskafka/Cargo.toml" <<'EOF'

[dev-dependencies]
assert_matches = "1.5"
proptest = "1"
proptest-derive = "0.6"

[workspace]
EOF
CARGO_TARGET_DIR=$dir/target cargo test --manifest-path "$dir/rskafka/Cargo.toml" --lib "$@"
