#!/usr/bin/env bash
# Fails when a forbidden native dependency enters the build: librdkafka (rdkafka, rdkafka-sys)
# or OpenSSL (openssl, openssl-sys, native-tls), or AWS-LC (aws-lc-sys, aws-lc-rs: C and CMake,
# pulled in by the default TLS of reqwest and object_store's `aws` feature). Kafka goes through
# rskafka (pure Rust) and TLS through rustls with ring. `deny.toml` says the same for cargo-deny users; this needs only cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
forbidden='^(rdkafka|rdkafka-sys|openssl|openssl-sys|native-tls|aws-lc-sys|aws-lc-rs|aws-lc-fips-sys) '
found=$(cargo tree --locked --all-features -e normal,build --prefix none 2>/dev/null | grep -E "$forbidden" | sort -u || true)
if [[ -n $found ]]; then
  echo "forbidden dependencies in the tree (see deny.toml for why):" >&2
  echo "$found" >&2
  echo "run \`cargo tree -i <crate>\` to see who pulls them in" >&2
  exit 1
fi
echo "dependency check: no librdkafka, no OpenSSL, no AWS-LC"
