#!/usr/bin/env bash
# shellcheck disable=SC2329  # cleanup/on_signal are invoked by traps
# Runs $TEST_CMD (or the arguments) with the local services up, then stops only the
# services that this run started, whatever the outcome; exits with the command's status.
#
# How it knows what it started: `services.sh up --record FILE` appends to FILE the
# name of each service it actually had to start (kafka, mariadb, or docker); services
# that were already running are not written. On exit (normal, failure, Ctrl-C, TERM)
# `services.sh down --only FILE` stops exactly those. FILE is .local/started-by-test.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL_DIR=${LOCAL_DIR:-$ROOT/.local}
RECORD=$LOCAL_DIR/started-by-test
mkdir -p "$LOCAL_DIR"

if (($#)); then cmd=("$@"); else cmd=(bash -c "${TEST_CMD:?TEST_CMD is not set}"); fi

if [[ -s $RECORD ]]; then
  # A previous run died before cleaning up (e.g. SIGKILL): its services are still ours.
  echo "[test] services left by an earlier interrupted run: $(sort -u "$RECORD" | tr '\n' ' ')" >&2
else
  : >"$RECORD"
fi

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -s $RECORD ]]; then
    echo "[test] stopping what this run started: $(sort -u "$RECORD" | tr '\n' ' ')" >&2
    "$ROOT/scripts/services.sh" down --only "$RECORD" || true
  else
    echo "[test] services were already running; leaving them up" >&2
  fi
  rm -f "$RECORD"
  exit "$rc"
}
child=
on_signal() { # forward to the test command's process group, then exit (cleanup runs on EXIT)
  echo "[test] got SIG$1, stopping the test command" >&2
  if [[ -n $child ]]; then
    kill -TERM -- "-$child" 2>/dev/null || kill -TERM "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  exit "$2"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

"$ROOT/scripts/services.sh" up --record "$RECORD"
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
export MYSQL_URL=${MYSQL_URL:-mysql://reclamacoes:reclamacoes@127.0.0.1:${MYSQL_PORT:-3306}/reclamacoes_db}
echo "[test] running: ${cmd[*]}" >&2
# In the background, in its own process group, so that a signal to this script is
# handled at once (bash defers traps while a foreground child runs) and reaches
# every process of the test run; stdin stays the caller's.
if command -v setsid >/dev/null 2>&1; then
  setsid "${cmd[@]}" <&0 &
else
  "${cmd[@]}" <&0 &
fi
child=$!
rc=0
wait "$child" || rc=$?
child=
echo "[test] exit status $rc" >&2
exit "$rc"
