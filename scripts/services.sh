#!/usr/bin/env bash
# Local development services: Apache Kafka 4.4 (single-node KRaft) and MariaDB,
# both bound to 127.0.0.1 only, all state under .local/ (git-ignored).
# When a Docker engine answers, docker-compose.yml is used instead.
#
# Usage: scripts/services.sh COMMAND [ARGS]
#   up [--record FILE]   start what is not running (idempotent), load sql/schema.sql,
#                        and sql/seed.sql when table bancos is empty. With --record,
#                        append the names of the services this call started to FILE.
#   down [--only FILE]   stop what `up` started (pid files); with --only, stop only the
#                        services listed in FILE (as written by up --record).
#   status               print what runs; exit 0 if everything runs, 3 otherwise.
#   fetch                install/download what `up` needs, start nothing
#                        (apt packages mariadb-server mariadb-client kcat, Kafka jars).
#   seed                 replace the contents of table bancos with sql/seed.sql.
#   load-bancos FILE     replace the contents of table bancos with a Banco Central
#                        "enquadramento" TSV (Segmento<TAB>CNPJ<TAB>Nome, CRLF, header).
#   sql [ARGS]           open a mariadb client as the admin user (socket), e.g. `sql -e 'SELECT 1'`.
#   logs                 print the paths of the log files.
#
# With S3=1, `up` also starts the local S3 server (scripts/s3.sh: versitygw on 127.0.0.1:7070,
# built once, ~2.5 min); `down` and `status` always include it.
#
# Environment (defaults): KAFKA_PORT=9092 KAFKA_CONTROLLER_PORT=9093 MYSQL_PORT=3306
#   SERVICES="kafka mariadb" (what `up` starts; e.g. SERVICES=mariadb for a private database)
#   MYSQL_BINLOG=on|off (row-based binary log for --enrich-cdc; on) MYSQL_SERVER_ID=1
#   KAFKA_HEAP_OPTS="-Xms256m -Xmx1g" KAFKA_AUTO_CREATE_TOPICS=false
#   KAFKA_READY_TIMEOUT=90 MYSQL_READY_TIMEOUT=60 STOP_TIMEOUT=30 (seconds)
#   SERVICES_MODE=auto|local|docker (auto: docker when `docker info` succeeds)
#   LOCAL_DIR=<repo>/.local
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL_DIR=${LOCAL_DIR:-$ROOT/.local}

KAFKA_VERSION=4.4.0
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}
KAFKA_AUTO_CREATE_TOPICS=${KAFKA_AUTO_CREATE_TOPICS:-false}
KAFKA_READY_TIMEOUT=${KAFKA_READY_TIMEOUT:-90}
MYSQL_PORT=${MYSQL_PORT:-3306}
MYSQL_READY_TIMEOUT=${MYSQL_READY_TIMEOUT:-60}
MYSQL_BINLOG=${MYSQL_BINLOG:-on}
MYSQL_SERVER_ID=${MYSQL_SERVER_ID:-1}
SERVICES=${SERVICES:-kafka mariadb}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
SERVICES_MODE=${SERVICES_MODE:-auto}
# Root password of the mysql container in docker mode (local dev only; see docker-compose.yml).
MYSQL_ROOT_PASSWORD=${MYSQL_ROOT_PASSWORD:-root}

KAFKA_DIR=$LOCAL_DIR/kafka
KAFKA_LIBS=$KAFKA_DIR/libs
KAFKA_DATA=$KAFKA_DIR/data
KAFKA_LOGS=$KAFKA_DIR/logs
KAFKA_PID=$KAFKA_DIR/kafka.pid
KAFKA_CONF=$KAFKA_DIR/server.properties
KAFKA_POM=$ROOT/services/kafka/pom.xml
KAFKA_LOG4J=$ROOT/services/kafka/log4j2.xml

MYSQL_DIR=$LOCAL_DIR/mysql
MYSQL_DATA=$MYSQL_DIR/data
MYSQL_SOCKET=$MYSQL_DIR/mysqld.sock
MYSQL_PID=$MYSQL_DIR/mariadbd.pid
MYSQL_CONF=$MYSQL_DIR/my.cnf
MYSQL_ERRLOG=$MYSQL_DIR/error.log
MYSQL_DB=reclamacoes_db

SQL_SCHEMA=$ROOT/sql/schema.sql
SQL_SEED=$ROOT/sql/seed.sql

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------- helpers

is_root() { [[ $(id -u) -eq 0 ]]; }

# Docker is used only when an engine actually answers and the compose plugin exists.
DOCKER_OK=
use_docker() {
  case $SERVICES_MODE in
    local) return 1 ;;
    docker) return 0 ;;
  esac
  if [[ -z $DOCKER_OK ]]; then
    DOCKER_OK=no
    if command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1 \
        && docker compose version >/dev/null 2>&1; then
      DOCKER_OK=yes
    fi
  fi
  [[ $DOCKER_OK == yes ]]
}

compose() { docker compose -f "$ROOT/docker-compose.yml" "$@"; }

apt_updated=
apt_install() {
  is_root || die "missing packages: $*; install them (sudo apt-get install -y $*) and retry"
  command -v apt-get >/dev/null || die "missing packages: $* and no apt-get to install them"
  if [[ -z $apt_updated ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "apt-get install -y $*"
  # policy-rc.d / no systemd: the packaged service is not started; we start our own server.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_packages() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
  command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
  command -v kcat >/dev/null 2>&1 || missing+=(kcat)
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
  command -v mariadbd >/dev/null 2>&1 || die "mariadbd not found after installing mariadb-server"
}

# Kafka jars from Maven Central (services/kafka/pom.xml); re-resolved when the pom changes.
ensure_kafka_jars() {
  local stamp=$KAFKA_LIBS/.pom.sha256 want
  want=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" && -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]]; then
    return 0
  fi
  log "resolving Kafka $KAFKA_VERSION jars from Maven Central into ${KAFKA_LIBS#"$ROOT"/}"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$KAFKA_LIBS"
  if ! mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
      -DoutputDirectory="$KAFKA_LIBS" >"$KAFKA_DIR/mvn.log" 2>&1; then
    tail -n 30 "$KAFKA_DIR/mvn.log" >&2
    die "kafka: maven could not resolve the jars (see $KAFKA_DIR/mvn.log)"
  fi
  echo "$want" >"$stamp"
}

# pid_of PIDFILE MARKER: prints the pid if the process in PIDFILE is alive and its
# command line contains MARKER (guards against pid reuse); removes stale pid files.
pid_of() {
  local file=$1 marker=$2 pid args
  [[ -f $file ]] || return 1
  pid=$(tr -dc '0-9' <"$file")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    args=$(ps -o args= -p "$pid" 2>/dev/null || true)
    if [[ $args == *"$marker"* ]]; then
      echo "$pid"
      return 0
    fi
  fi
  log "removing stale pid file ${file#"$ROOT"/} (pid ${pid:-?} is not running)"
  rm -f "$file"
  return 1
}
kafka_pid() { pid_of "$KAFKA_PID" "$KAFKA_CONF"; }
mysql_pid() { pid_of "$MYSQL_PID" "$MYSQL_CONF"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

render() { # render TEMPLATE OUT VAR...
  local tpl=$1 out=$2 expr=() v
  shift 2
  for v in "$@"; do expr+=(-e "s|@$v@|${!v}|g"); done
  sed "${expr[@]}" "$tpl" >"$out.tmp"
  mv "$out.tmp" "$out"
}

# start_detached PIDFILE LOGFILE CMD...: runs CMD in its own session (so Ctrl-C in the
# calling terminal does not reach it) and writes its pid to PIDFILE.
start_detached() {
  local pidfile=$1 logfile=$2
  shift 2
  rm -f "$pidfile"
  echo "---- $(date -u +%FT%TZ) starting: $*" >>"$logfile"
  # shellcheck disable=SC2016  # $$ and $@ are for the inner bash
  local launcher=(bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@")
  if command -v setsid >/dev/null 2>&1; then
    setsid "${launcher[@]}" >>"$logfile" 2>&1 </dev/null &
  else
    nohup "${launcher[@]}" >>"$logfile" 2>&1 </dev/null &
  fi
  for _ in $(seq 50); do [[ -s $pidfile ]] && return 0; sleep 0.1; done
  die "could not start $1 (no pid file $pidfile)"
}

# stop_pid NAME PID PIDFILE: SIGTERM, wait STOP_TIMEOUT s, then SIGKILL.
stop_pid() {
  local name=$1 pid=$2 pidfile=$3 waited=0
  log "$name: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= STOP_TIMEOUT * 10)); then
      log "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f "$pidfile"
  log "$name: stopped"
}

fail_start() { # fail_start NAME WHY LOGFILE [MORE_LOGFILES...]
  local name=$1 why=$2 f
  shift 2
  log "$name: FAILED to start: $why"
  for f in "$@"; do
    if [[ -s $f ]]; then
      log "last lines of $f:"
      tail -n 20 "$f" | sed 's/^/    /' >&2
    fi
  done
  die "$name is not ready; read $*"
}

# --------------------------------------------------------------------------- Kafka

kafka_jvm_opts() { # JVM options of every Kafka java process (broker and storage tool)
  # shellcheck disable=SC2206  # KAFKA_HEAP_OPTS is a list of JVM options
  KAFKA_JVM=(java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
    -Dkafka.logs.dir="$KAFKA_LOGS" -Dlog4j2.configurationFile="$KAFKA_LOG4J"
    -cp "$KAFKA_LIBS/*")
}
kafka_java() { kafka_jvm_opts; "${KAFKA_JVM[@]}" "$@"; }

kafka_metadata_ok() {
  if command -v kcat >/dev/null 2>&1; then
    kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 5 2>/dev/null | grep -q "broker 1 at 127.0.0.1:$KAFKA_PORT"
  else
    timeout 30 java -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
      -Dkafka.logs.dir="$KAFKA_LOGS" org.apache.kafka.tools.BrokerApiVersionsCommand \
      --bootstrap-server "127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1
  fi
}

kafka_up() { # appends "kafka" to STARTED_NOW when it starts it
  local pid
  if pid=$(kafka_pid); then
    log "kafka: already running (pid $pid, 127.0.0.1:$KAFKA_PORT)"
    return 0
  fi
  if port_open "$KAFKA_PORT"; then
    die "kafka: port 127.0.0.1:$KAFKA_PORT is in use by another process (not started by this script); stop it or set KAFKA_PORT"
  fi
  mkdir -p "$KAFKA_DIR" "$KAFKA_DATA" "$KAFKA_LOGS"
  ensure_kafka_jars
  # shellcheck disable=SC2034  # used by render (indirect expansion)
  local KAFKA_DATA_DIR=$KAFKA_DATA
  render "$ROOT/services/kafka/server.properties.in" "$KAFKA_CONF" \
    KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_DATA_DIR KAFKA_AUTO_CREATE_TOPICS

  # A data directory deleted by hand (to start from an empty broker) is formatted again.
  if [[ ! -f $KAFKA_DIR/.formatted || ! -f $KAFKA_DATA/meta.properties ]]; then
    local cluster_id
    log "kafka: formatting storage in ${KAFKA_DATA#"$ROOT"/} (first start, or no meta.properties)"
    rm -rf "$KAFKA_DATA" && mkdir -p "$KAFKA_DATA"
    cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$KAFKA_LOGS/format.log" | tail -n1)
    [[ -n $cluster_id ]] || fail_start kafka "could not generate a cluster id" "$KAFKA_LOGS/format.log"
    if ! kafka_java kafka.tools.StorageTool format --config "$KAFKA_CONF" \
        --cluster-id "$cluster_id" --standalone >>"$KAFKA_LOGS/format.log" 2>&1; then
      fail_start kafka "storage format failed" "$KAFKA_LOGS/format.log"
    fi
    echo "$cluster_id" >"$KAFKA_DIR/.formatted"
  fi

  log "kafka: starting Apache Kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$KAFKA_PORT"
  kafka_jvm_opts
  start_detached "$KAFKA_PID" "$KAFKA_LOGS/stdout.log" "${KAFKA_JVM[@]}" kafka.Kafka "$KAFKA_CONF"
  STARTED_NOW+=(kafka)
}

kafka_wait() {
  local start=$SECONDS pid
  pid=$(cat "$KAFKA_PID" 2>/dev/null || true)
  while :; do
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$KAFKA_PID"
      fail_start kafka "the process exited" "$KAFKA_LOGS/server.log" "$KAFKA_LOGS/stdout.log"
    fi
    if port_open "$KAFKA_PORT" && kafka_metadata_ok; then
      log "kafka: ready after $((SECONDS - start))s (pid $pid)"
      return 0
    fi
    if ((SECONDS - start >= KAFKA_READY_TIMEOUT)); then
      fail_start kafka "no metadata answer on 127.0.0.1:$KAFKA_PORT within ${KAFKA_READY_TIMEOUT}s" \
        "$KAFKA_LOGS/server.log"
    fi
    sleep 0.5
  done
}

kafka_down() {
  local pid
  if pid=$(kafka_pid); then stop_pid kafka "$pid" "$KAFKA_PID"; else log "kafka: not running"; fi
}

# --------------------------------------------------------------------------- MariaDB

mysql_admin() { # admin client over the socket (unix_socket authentication)
  mariadb --defaults-file="$MYSQL_CONF" --protocol=socket -u "$(id -un)" \
    --default-character-set=utf8mb4 "$@"
}

mysql_up() { # appends "mariadb" to STARTED_NOW when it starts it
  local pid
  if pid=$(mysql_pid); then
    log "mariadb: already running (pid $pid, 127.0.0.1:$MYSQL_PORT)"
    return 0
  fi
  if port_open "$MYSQL_PORT"; then
    die "mariadb: port 127.0.0.1:$MYSQL_PORT is in use by another process (not started by this script); stop it or set MYSQL_PORT"
  fi
  mkdir -p "$MYSQL_DIR"
  # shellcheck disable=SC2034  # used by render (indirect expansion)
  local MYSQL_DATA_DIR=$MYSQL_DATA
  local MYSQL_BINLOG_OPTION
  case $MYSQL_BINLOG in
    on) MYSQL_BINLOG_OPTION=log-bin=mariadb-bin ;;
    off) MYSQL_BINLOG_OPTION=skip-log-bin ;;
    *) die "MYSQL_BINLOG=$MYSQL_BINLOG: use on or off" ;;
  esac
  render "$ROOT/services/mariadb/my.cnf.in" "$MYSQL_CONF" \
    MYSQL_DATA_DIR MYSQL_SOCKET MYSQL_DIR MYSQL_PORT MYSQL_SERVER_ID
  sed -i "s|@MYSQL_BINLOG@|$MYSQL_BINLOG_OPTION|" "$MYSQL_CONF"
  local user_opt=()
  is_root && user_opt=(--user=root)

  if [[ ! -f $MYSQL_DIR/.initialized ]]; then
    log "mariadb: creating data directory ${MYSQL_DATA#"$ROOT"/} (first start)"
    rm -rf "$MYSQL_DATA" && mkdir -p "$MYSQL_DATA"
    if ! mariadb-install-db --defaults-file="$MYSQL_CONF" "${user_opt[@]}" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$MYSQL_DIR/install-db.log" 2>&1; then
      fail_start mariadb "mariadb-install-db failed" "$MYSQL_DIR/install-db.log"
    fi
    date -u +%FT%TZ >"$MYSQL_DIR/.initialized"
  fi

  log "mariadb: starting $(mariadbd --version 2>/dev/null | awk '{print $3}') on 127.0.0.1:$MYSQL_PORT"
  start_detached "$MYSQL_PID" "$MYSQL_DIR/stdout.log" \
    mariadbd --defaults-file="$MYSQL_CONF" "${user_opt[@]}"
  STARTED_NOW+=(mariadb)
}

mysql_wait() {
  local start=$SECONDS pid
  pid=$(cat "$MYSQL_PID" 2>/dev/null || true)
  while :; do
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$MYSQL_PID"
      fail_start mariadb "the process exited" "$MYSQL_ERRLOG" "$MYSQL_DIR/stdout.log"
    fi
    if [[ -S $MYSQL_SOCKET ]] && mysql_admin -N -e 'SELECT 1' >/dev/null 2>&1 && port_open "$MYSQL_PORT"; then
      log "mariadb: ready after $((SECONDS - start))s (pid $pid)"
      return 0
    fi
    if ((SECONDS - start >= MYSQL_READY_TIMEOUT)); then
      fail_start mariadb "no answer on ${MYSQL_SOCKET#"$ROOT"/} within ${MYSQL_READY_TIMEOUT}s" "$MYSQL_ERRLOG"
    fi
    sleep 0.3
  done
}

mysql_down() {
  local pid
  if pid=$(mysql_pid); then stop_pid mariadb "$pid" "$MYSQL_PID"; else log "mariadb: not running"; fi
}

# SQL as the admin user: socket locally, `docker compose exec` in docker mode.
sql_admin() {
  if use_docker; then
    compose exec -T mysql mysql -uroot -p"$MYSQL_ROOT_PASSWORD" --default-character-set=utf8mb4 "$@"
  else
    mysql_admin "$@"
  fi
}

load_schema() {
  sql_admin <"$SQL_SCHEMA" || die "mariadb: loading sql/schema.sql failed"
  local n
  n=$(sql_admin -N -B -e "SELECT COUNT(*) FROM $MYSQL_DB.bancos") || die "mariadb: cannot count bancos"
  if [[ $n == 0 ]]; then
    sql_admin <"$SQL_SEED" || die "mariadb: loading sql/seed.sql failed"
    log "mariadb: schema loaded; bancos was empty, seeded with $(sql_admin -N -B -e "SELECT COUNT(*) FROM $MYSQL_DB.bancos") rows from sql/seed.sql"
  else
    log "mariadb: schema loaded; bancos has $n rows (left as is; \`make seed\` resets it to sql/seed.sql)"
  fi
}

# --------------------------------------------------------------------------- commands

cmd_fetch() {
  if use_docker; then
    compose pull
    return
  fi
  ensure_packages
  mkdir -p "$KAFKA_DIR"
  ensure_kafka_jars
  log "fetch: done (mariadbd, mariadb, kcat, Kafka jars in ${KAFKA_LIBS#"$ROOT"/})"
}

cmd_up() {
  local record=
  if [[ ${1:-} == --record ]]; then record=${2:?--record needs a file}; fi

  if use_docker; then
    local before
    before=$(compose ps --status running -q 2>/dev/null | wc -l)
    log "docker engine available: docker compose up -d --wait"
    compose up -d --wait
    if [[ -n $record && $before == 0 ]]; then echo docker >>"$record"; fi
    load_schema
    if [[ ${S3:-0} == 1 ]]; then "$ROOT/scripts/s3.sh" bucket; fi
    return
  fi

  if [[ " $SERVICES " != *" kafka "* ]]; then
    command -v mariadbd >/dev/null 2>&1 || apt_install mariadb-server mariadb-client
  else
    ensure_packages
  fi
  mkdir -p "$LOCAL_DIR"
  STARTED_NOW=()
  if [[ " $SERVICES " == *" mariadb "* ]]; then mysql_up; fi
  if [[ " $SERVICES " == *" kafka "* ]]; then kafka_up; fi
  local started=("${STARTED_NOW[@]}")
  # Record before waiting, so that a caller's cleanup also stops a half-started service.
  if [[ -n $record ]] && ((${#started[@]})); then printf '%s\n' "${started[@]}" >>"$record"; fi

  local s
  for s in "${started[@]}"; do
    case $s in mariadb) mysql_wait ;; kafka) kafka_wait ;; esac
  done
  if [[ " $SERVICES " == *" mariadb "* ]]; then load_schema; fi
  if [[ ${S3:-0} == 1 ]]; then "$ROOT/scripts/s3.sh" up ${record:+--record "$record"}; fi
  if ((${#started[@]})); then
    log "up: started ${started[*]}"
  else
    log "up: already running, nothing to start"
  fi
  log "KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT MYSQL_URL=mysql://reclamacoes:reclamacoes@127.0.0.1:$MYSQL_PORT/$MYSQL_DB"
}

cmd_down() {
  local only=
  if [[ ${1:-} == --only ]]; then only=${2:?--only needs a file}; fi
  if [[ -n $only ]]; then
    [[ -e $only ]] || { log "down: nothing recorded in ${only#"$ROOT"/}, nothing to stop"; return 0; }
    local s
    while read -r s; do
      case $s in
        kafka) kafka_down ;;
        mariadb) mysql_down ;;
        docker) compose down ;;
        s3) "$ROOT/scripts/s3.sh" down ;;
        "") ;;
        *) log "down: unknown service '$s' in $only" ;;
      esac
    done < <(sort -u "$only")
    return 0
  fi
  if use_docker; then compose down; fi
  kafka_down
  mysql_down
  "$ROOT/scripts/s3.sh" down
}

cmd_status() {
  local ok=0 pid
  if use_docker; then compose ps; fi
  if pid=$(kafka_pid); then
    echo "kafka:   running  pid $pid  127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)  data ${KAFKA_DATA#"$ROOT"/}"
  else
    echo "kafka:   stopped"; ok=3
  fi
  if pid=$(mysql_pid); then
    echo "mariadb: running  pid $pid  127.0.0.1:$MYSQL_PORT  socket ${MYSQL_SOCKET#"$ROOT"/}  data ${MYSQL_DATA#"$ROOT"/}"
  else
    echo "mariadb: stopped"; ok=3
  fi
  if use_docker && compose ps --status running -q 2>/dev/null | grep -q .; then ok=0; fi
  # The S3 server counts for the exit status only when asked for (S3=1).
  if ! "$ROOT/scripts/s3.sh" status && [[ ${S3:-0} == 1 ]]; then ok=3; fi
  return $ok
}

cmd_seed() {
  { echo "START TRANSACTION; DELETE FROM $MYSQL_DB.bancos;"
    grep -v '^START TRANSACTION\|^COMMIT' "$SQL_SEED"
    echo "COMMIT;"
  } | sql_admin || die "seed failed"
  log "seed: bancos now has $(sql_admin -N -B -e "SELECT COUNT(*) FROM $MYSQL_DB.bancos") rows (sql/seed.sql)"
}

# TSV (UTF-8, CRLF or LF, tab separated, header Segmento/CNPJ/Nome, CNPJ without
# leading zeros) -> SQL that replaces the whole table in one transaction. Later lines
# win for a repeated CNPJ (REPLACE in file order).
cmd_load_bancos() {
  local file=${1:-}
  [[ -n $file ]] || die "usage: load-bancos FILE (e.g. make load-bancos FILE=fixtures/bancos.tsv)"
  [[ -r $file ]] || die "load-bancos: cannot read $file"
  local sqlfile
  sqlfile=$(mktemp "${TMPDIR:-/tmp}/load-bancos.XXXXXX.sql")
  # shellcheck disable=SC2064
  trap "rm -f '$sqlfile'" RETURN
  if ! LC_ALL=C awk -F'\t' -v db="$MYSQL_DB" '
    function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
    function q(s) { gsub(/\\/, "\\\\", s); gsub(/\047/, "\047\047", s); return "\047" s "\047" }
    BEGIN { print "SET NAMES utf8mb4;"; print "START TRANSACTION;"; print "DELETE FROM " db ".bancos;"; n = 0 }
    { sub(/\r$/, "") }
    NR == 1 {
      sub(/^\357\273\277/, "")  # UTF-8 BOM, if any
      if (trim($1) != "Segmento" || trim($2) != "CNPJ" || trim($3) != "Nome") {
        printf "line 1: expected header Segmento<TAB>CNPJ<TAB>Nome, got: %s\n", $0 > "/dev/stderr"; bad = 1; exit 1
      }
      next
    }
    /^[ \t]*$/ { next }
    {
      seg = trim($1); cnpj = trim($2); nome = trim($3)
      if (NF < 3 || cnpj !~ /^[0-9]+$/ || length(cnpj) > 8 || seg == "" || nome == "") {
        printf "line %d: bad record: %s\n", NR, $0 > "/dev/stderr"; bad = 1; exit 1
      }
      cnpj = sprintf("%08d", cnpj + 0)
      if (n % 500 == 0) { if (n) print ";"; printf "REPLACE INTO %s.bancos (cnpj, segmento, nome) VALUES\n", db } else print ","
      printf "(%s,%s,%s)", q(cnpj), q(seg), q(nome)
      n++; seen[cnpj] = 1
    }
    END {
      if (bad) exit 1
      if (n) print ";"
      print "COMMIT;"
      d = 0; for (k in seen) d++
      printf "%d records, %d distinct CNPJs\n", n, d > "/dev/stderr"
    }' "$file" >"$sqlfile"; then
    die "load-bancos: $file is not a valid enquadramento file"
  fi
  sql_admin <"$sqlfile" || die "load-bancos: loading into $MYSQL_DB.bancos failed"
  log "load-bancos: bancos now has $(sql_admin -N -B -e "SELECT COUNT(*) FROM $MYSQL_DB.bancos") rows (from $file; previous contents replaced)"
}

cmd_logs() {
  echo "$KAFKA_LOGS/server.log"
  echo "$KAFKA_LOGS/stdout.log"
  echo "$KAFKA_LOGS/format.log"
  echo "$MYSQL_ERRLOG"
  echo "$MYSQL_DIR/install-db.log"
  "$ROOT/scripts/s3.sh" logs
  if use_docker; then echo "(docker) docker compose -f $ROOT/docker-compose.yml logs"; fi
}

main() {
  local cmd=${1:-}
  shift || true
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    fetch) cmd_fetch ;;
    seed) cmd_seed ;;
    load-bancos) cmd_load_bancos "$@" ;;
    sql) sql_admin "$@" ;;
    logs) cmd_logs ;;
    *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
