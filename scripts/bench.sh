#!/usr/bin/env bash
# Benchmarks (see BENCHMARKS.md): installs what they need, builds the release binaries, then
# runs bench/bench.py. Services must be up; `make bench*` runs this through
# scripts/with-services.sh, which starts the missing ones and stops only those afterwards.
#
# Usage: scripts/bench.sh setup                  install/build only
#        scripts/bench.sh full|quick|produce|consume|enrich [bench.py args, e.g. --rows 200000]
#        scripts/bench.sh profile [ROWS] [--only produce|consume]   perf profiles of app produce / consume
#        scripts/bench.sh group [--rows N] [--members 1,3]   1 vs N `app consume --group` instances
#
# Installs (idempotent): Debian kcat, openjdk-17-jre-headless, maven, linux-perf (profile
# only); the Kafka jars (scripts/services.sh fetch); .local/bench-venv with pinned pyspark,
# kafka-python, lz4, matplotlib, duckdb (PyPI); .local/bench-jars with spark-sql-kafka and
# mysql-connector-j (Maven Central, bench/spark/pom.xml); generated data in .local/bench-data.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOCAL=$ROOT/.local
# No bench/__pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1
VENV=$LOCAL/bench-venv
JARS=$LOCAL/bench-jars
# pyspark's version must equal spark.version in bench/spark/pom.xml.
PY_PACKAGES=(pyspark==4.2.0 kafka-python==3.0.12 lz4==4.4.5 matplotlib==3.11.2 duckdb==2.0.1)

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

apt_ready=
apt_install() {
  if [[ -z $apt_ready ]]; then apt-get update -qq; apt_ready=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

system_packages() {
  local missing=()
  command -v kcat >/dev/null || missing+=(kcat)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if ((${#missing[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]})"
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

python_venv() {
  if [[ ! -x $VENV/bin/python ]]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local want=$VENV/.packages
  if [[ ! -f $want || $(cat "$want") != "${PY_PACKAGES[*]}" ]]; then
    log "installing ${PY_PACKAGES[*]} into $VENV (PyPI)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}" \
      || die "pip install failed; check that PyPI is reachable"
    echo "${PY_PACKAGES[*]}" >"$want"
  fi
}

spark_jars() {
  local pom=$ROOT/bench/spark/pom.xml stamp=$JARS/.pom
  if [[ ! -f $stamp ]] || ! cmp -s "$pom" "$stamp"; then
    log "resolving the Spark Kafka source and MySQL driver into $JARS (Maven Central)"
    rm -rf "$JARS"
    mkdir -p "$JARS"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$JARS" \
      -DincludeScope=runtime >"$LOCAL/bench-mvn.log" 2>&1 \
      || die "mvn dependency:copy-dependencies failed; see $LOCAL/bench-mvn.log"
    cp "$pom" "$stamp"
  fi
}

build() {
  log "cargo build --release --bin app --example gen_data --example delta_log"
  cargo build --release --bin app --example gen_data --example delta_log
}

check_services() {
  local kafka=${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
  kcat -b "$kafka" -L -m 10 >/dev/null 2>&1 \
    || die "Kafka does not answer at $kafka; run \`make up\` (make bench* start it themselves)"
  (exec 3<>"/dev/tcp/127.0.0.1/${MYSQL_PORT:-3306}") 2>/dev/null \
    || die "MariaDB does not answer at 127.0.0.1:${MYSQL_PORT:-3306}; run \`make up\`"
}

setup() {
  system_packages
  [[ -d $LOCAL/kafka/libs ]] || scripts/services.sh fetch
  python_venv
  spark_jars
  build
}

profile() {
  local rows=${1:-200000}
  shift || true
  command -v perf >/dev/null || apt_install linux-perf
  exec "$VENV/bin/python" bench/perf_profile.py --rows "$rows" "$@"
}

cmd=${1:-quick}
shift || true
case $cmd in
  setup) setup ;;
  full)
    setup
    check_services
    "$VENV/bin/python" bench/bench.py --mode full "$@"
    # The enrichment case (full vs partial cache, a generated 10M-row dimension).
    "$VENV/bin/python" bench/enrich.py
    # The Delta table against plain files, and the log's growth.
    scripts/python-env.sh
    exec "$VENV/bin/python" bench/table.py
    ;;
  quick | produce | consume)
    setup
    check_services
    exec "$VENV/bin/python" bench/bench.py --mode "$cmd" "$@"
    ;;
  enrich)
    setup
    check_services
    exec "$VENV/bin/python" bench/enrich.py "$@"
    ;;
  table)
    setup
    check_services
    scripts/python-env.sh
    exec "$VENV/bin/python" bench/table.py "$@"
    ;;
  group)
    setup
    check_services
    exec "$VENV/bin/python" bench/group.py "$@"
    ;;
  profile)
    setup
    check_services
    profile "$@"
    ;;
  *) die "unknown command '$cmd'; use setup, full, quick, produce, consume, group or profile" ;;
esac
