#!/usr/bin/env bash
# A local S3 server for tests, the demo and CI: versitygw v1.8.0 (Apache-2.0) with its posix
# backend, bound to 127.0.0.1 only, all state under .local/s3/ (git-ignored). Local development
# credentials only: access key `reclamacoes`, secret `reclamacoes-secret`, bucket `reclamacoes`.
#
# Usage: scripts/s3.sh COMMAND
#   build                build versitygw once with `go install` into .local/s3/bin (cached: a
#                        rebuild happens only when the version below changes; cold about 2.5 min
#                        on 2 cores, its Go caches under .local/go)
#   up [--record FILE]   build if needed, start the server if it is not running, wait until it
#                        answers, create the bucket, print the AWS_* exports. With --record,
#                        append `s3` to FILE when this call started it.
#   down                 stop the server this script started (pid file)
#   status               print whether it runs; exit 0 if it does, 3 otherwise
#   bucket               create the bucket if it is missing (the server runs elsewhere, e.g.
#                        docker compose)
#   env                  print the AWS_* exports for this server
#   logs                 print the log file's path
#
# Environment (defaults): S3_PORT=7070 S3_BUCKET=reclamacoes S3_ACCESS_KEY=reclamacoes
#   S3_SECRET_KEY=reclamacoes-secret S3_READY_TIMEOUT=60 STOP_TIMEOUT=30 LOCAL_DIR=<repo>/.local
#   GO=go (a Go >= 1.25 toolchain; Debian's golang-go is too old)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL_DIR=${LOCAL_DIR:-$ROOT/.local}

VERSITYGW_VERSION=v1.8.0
VERSITYGW_MODULE=github.com/versity/versitygw/cmd/versitygw
S3_PORT=${S3_PORT:-7070}
S3_BUCKET=${S3_BUCKET:-reclamacoes}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-reclamacoes}
S3_SECRET_KEY=${S3_SECRET_KEY:-reclamacoes-secret}
S3_REGION=us-east-1
S3_READY_TIMEOUT=${S3_READY_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}
GO=${GO:-go}

S3_DIR=$LOCAL_DIR/s3
S3_BIN=$S3_DIR/bin/versitygw
S3_STAMP=$S3_DIR/bin/.version
S3_DATA=$S3_DIR/data
S3_PID=$S3_DIR/versitygw.pid
S3_LOG=$S3_DIR/versitygw.log
GO_DIR=$LOCAL_DIR/go
ENDPOINT=http://127.0.0.1:$S3_PORT

log() { printf '[s3] %s\n' "$*" >&2; }
die() { printf '[s3] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The process in the pid file, if it is alive and is our server (guards against pid reuse).
server_pid() {
  local pid args
  [[ -f $S3_PID ]] || return 1
  pid=$(tr -dc '0-9' <"$S3_PID")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    args=$(ps -o args= -p "$pid" 2>/dev/null || true)
    if [[ $args == *"$S3_BIN"* ]]; then
      echo "$pid"
      return 0
    fi
  fi
  rm -f "$S3_PID"
  return 1
}

go_ok() { # a Go toolchain new enough for versitygw's go.mod (go 1.25)
  command -v "$GO" >/dev/null 2>&1 || return 1
  local v
  v=$("$GO" env GOVERSION 2>/dev/null) || return 1 # e.g. go1.26.8
  v=${v#go}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  ((major > 1 || minor >= 25))
}

cmd_build() {
  if [[ -x $S3_BIN && -f $S3_STAMP && $(<"$S3_STAMP") == "$VERSITYGW_VERSION" ]]; then
    return 0
  fi
  if ! go_ok; then
    die "building versitygw $VERSITYGW_VERSION needs Go 1.25 or later (found: $("$GO" version 2>/dev/null || echo "no '$GO' on PATH")).
       Install it from https://go.dev/dl (Debian's golang-go is too old), or with an existing Go >= 1.21
       run with GOTOOLCHAIN=go1.25.0 (the go command fetches that toolchain from the Go module proxy), then rerun"
  fi
  mkdir -p "$S3_DIR/bin" "$GO_DIR"
  log "building versitygw $VERSITYGW_VERSION with $("$GO" version | awk '{print $3}') (once; cold about 2.5 min on 2 cores; caches in ${GO_DIR#"$ROOT"/})"
  local start=$SECONDS
  # -modcacherw: the module cache stays deletable with plain rm -rf .local
  if ! GOPATH=$GO_DIR GOMODCACHE=$GO_DIR/mod GOCACHE=$GO_DIR/cache GOBIN=$S3_DIR/bin \
      GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0 \
      "$GO" install "$VERSITYGW_MODULE@$VERSITYGW_VERSION" >"$S3_DIR/build.log" 2>&1; then
    tail -n 30 "$S3_DIR/build.log" >&2
    die "go install $VERSITYGW_MODULE@$VERSITYGW_VERSION failed (see ${S3_DIR#"$ROOT"/}/build.log); check that the Go module proxy is reachable"
  fi
  echo "$VERSITYGW_VERSION" >"$S3_STAMP"
  log "built ${S3_BIN#"$ROOT"/} in $((SECONDS - start)) s"
}

# A signed S3 request with curl's SigV4 (the credentials go through stdin, not the command line).
# versitygw wants x-amz-content-sha256 (here: the SHA-256 of the empty body).
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
s3_curl() { # s3_curl METHOD PATH: prints the HTTP status
  local method=$1 path=$2
  local how=(-X "$method")
  if [[ $method == HEAD ]]; then how=(-I); fi
  curl -sS -o /dev/null -w '%{http_code}' -K - "${how[@]}" -H "x-amz-content-sha256: $EMPTY_SHA256" \
    "$ENDPOINT$path" <<EOF
user = "$S3_ACCESS_KEY:$S3_SECRET_KEY"
aws-sigv4 = "aws:amz:$S3_REGION:s3"
EOF
}

ensure_bucket() {
  local code
  code=$(s3_curl HEAD "/$S3_BUCKET" 2>/dev/null || true)
  case $code in
    200) log "bucket $S3_BUCKET: exists" ;;
    404)
      code=$(s3_curl PUT "/$S3_BUCKET" || true)
      [[ $code == 200 ]] || die "creating bucket $S3_BUCKET at $ENDPOINT failed (HTTP $code); see ${S3_LOG#"$ROOT"/}"
      log "bucket $S3_BUCKET: created"
      ;;
    *) die "bucket $S3_BUCKET at $ENDPOINT: HEAD answered HTTP ${code:-nothing}; see ${S3_LOG#"$ROOT"/}" ;;
  esac
}

print_env() {
  echo "export AWS_ENDPOINT_URL=$ENDPOINT AWS_ALLOW_HTTP=true AWS_REGION=$S3_REGION"
  echo "export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY   # local development only"
  echo "# then: app consume --output s3://$S3_BUCKET/<prefix>/   and   app inspect s3://$S3_BUCKET/<prefix>/"
}

cmd_up() {
  local record=
  if [[ ${1:-} == --record ]]; then record=${2:?--record needs a file}; fi
  local pid
  if pid=$(server_pid); then
    log "versitygw: already running (pid $pid, $ENDPOINT)"
  else
    if port_open "$S3_PORT"; then
      die "port 127.0.0.1:$S3_PORT is in use by another process (not started by this script); stop it or set S3_PORT"
    fi
    cmd_build
    mkdir -p "$S3_DATA"
    log "versitygw: starting $VERSITYGW_VERSION (posix backend, ${S3_DATA#"$ROOT"/}) on $ENDPOINT"
    rm -f "$S3_PID"
    echo "---- $(date -u +%FT%TZ) starting versitygw on $ENDPOINT" >>"$S3_LOG"
    # Credentials through the environment (not visible in ps); its own session, like services.sh.
    # shellcheck disable=SC2016  # $$ and $@ are for the inner bash
    ROOT_ACCESS_KEY_ID=$S3_ACCESS_KEY ROOT_SECRET_ACCESS_KEY=$S3_SECRET_KEY \
      setsid bash -c 'echo $$ >"$0"; exec "$@"' "$S3_PID" \
      "$S3_BIN" --port "127.0.0.1:$S3_PORT" --region "$S3_REGION" --health /health --quiet \
      posix "$S3_DATA" >>"$S3_LOG" 2>&1 </dev/null &
    for _ in $(seq 50); do [[ -s $S3_PID ]] && break; sleep 0.1; done
    [[ -s $S3_PID ]] || die "versitygw did not start (no pid file); see ${S3_LOG#"$ROOT"/}"
    if [[ -n $record ]]; then echo s3 >>"$record"; fi
    local start=$SECONDS
    pid=$(<"$S3_PID")
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "$ENDPOINT/health" 2>/dev/null) == 200 ]]; do
      if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$S3_LOG" >&2
        die "versitygw exited; see ${S3_LOG#"$ROOT"/}"
      fi
      if ((SECONDS - start >= S3_READY_TIMEOUT)); then
        die "versitygw does not answer on $ENDPOINT/health within ${S3_READY_TIMEOUT}s; see ${S3_LOG#"$ROOT"/}"
      fi
      sleep 0.2
    done
    log "versitygw: ready after $((SECONDS - start))s (pid $pid)"
  fi
  ensure_bucket
  print_env >&2
}

cmd_down() {
  local pid waited=0
  if ! pid=$(server_pid); then
    log "versitygw: not running"
    return 0
  fi
  log "versitygw: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= STOP_TIMEOUT * 10)); then
      log "versitygw: still running after ${STOP_TIMEOUT}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f "$S3_PID"
  log "versitygw: stopped"
}

cmd_status() {
  local pid
  if pid=$(server_pid); then
    echo "s3:      running  pid $pid  $ENDPOINT  bucket $S3_BUCKET  data ${S3_DATA#"$ROOT"/}  (versitygw $VERSITYGW_VERSION)"
    return 0
  fi
  if [[ -x $S3_BIN ]]; then
    echo "s3:      stopped  (versitygw built; \`make up S3=1\` starts it)"
  else
    echo "s3:      stopped  (not built; \`make up S3=1\` builds and starts it)"
  fi
  return 3
}

case ${1:-} in
  build) cmd_build ;;
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  bucket) ensure_bucket ;;
  env) print_env ;;
  logs) echo "$S3_LOG"; echo "$S3_DIR/build.log" ;;
  *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
