#!/usr/bin/env bash
# The Python environment of the independent Parquet and Delta Lake readers: .local/venv with
# pinned DuckDB, its httpfs and delta extensions, pyarrow, pandas, polars and deltalake (delta-rs)
# from PyPI. `make test`, `make chaos` and `make demo` call this before they need it (the tests
# run `.local/venv/bin/python`, or $RECLAMACOES_PYTHON when set); it is the only place that
# creates or changes .local/venv.
#
# Idempotent: .local/venv/.packages records the installed set; when it equals PACKAGES below and
# the venv's python runs, nothing happens (a few milliseconds). Otherwise it (re)creates the
# venv and installs PACKAGES (first run on the 2-core machine: about 25 s with PyPI reachable,
# 830 MB on disk). Changing PACKAGES here reinstalls on the next run.
#
# Needs python3 >= 3.11 with the venv module: as root, missing ones are installed with apt
# (Debian packages python3 and python3-venv); otherwise it says what to install.
#
# Usage: scripts/python-env.sh          prints one line of what it did; exit 0 when ready
# Environment: LOCAL_DIR (default <repo>/.local), PYTHON3 (interpreter for the venv, python3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL_DIR=${LOCAL_DIR:-$ROOT/.local}
VENV=$LOCAL_DIR/venv
STAMP=$VENV/.packages
PYTHON3=${PYTHON3:-python3}

# Pinned together; the last eight are what the first seven resolved to, pinned so that a rerun
# on another day installs the same set. duckdb-ext-httpfs and duckdb-ext-delta ship DuckDB's
# httpfs and delta extensions for this DuckDB version (DuckDB cannot download extensions here;
# their version starts with DuckDB's): SET extension_directory to
# <site-packages>/duckdb_ext/extensions, then LOAD httpfs / LOAD delta.
PACKAGES=(
  duckdb==1.4.4
  duckdb-ext-httpfs==1.4.4.20260205
  duckdb-ext-delta==1.4.4.20260205
  pyarrow==26.0.1
  pandas==3.1.1
  polars==2.1.0
  deltalake==1.6.6
  polars-runtime-32==2.1.0
  numpy==2.4.6
  python-dateutil==4.0.0
  tzdata==2026.6
  arro3-core==0.9.1
  deprecated==1.3.1
  wrapt==2.5.2
  typing-extensions==4.16.0
)

log() { printf '[python-env] %s\n' "$*" >&2; }
die() { printf '[python-env] ERROR: %s\n' "$*" >&2; exit 1; }
rel() { printf '%s' "${1#"$ROOT"/}"; }

# The venv is current when the stamp lists exactly PACKAGES and its python still runs (it is
# gone when the interpreter it was made from was removed).
current() {
  [[ -f $STAMP && $(<"$STAMP") == "${PACKAGES[*]}" ]] && "$VENV/bin/python" -c '' 2>/dev/null
}

if current; then
  log "$(rel "$VENV"): up to date (${PACKAGES[*]:0:7})"
  exit 0
fi

# --- python3 and its venv module ------------------------------------------------------------
base_python_ok() {
  command -v "$PYTHON3" >/dev/null 2>&1 &&
    "$PYTHON3" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}
if ! base_python_ok; then
  want="python3 (3.11 or later) with its venv module"
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "$want missing: apt-get install python3 python3-venv"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             python3 python3-venv >/dev/null; }; then
      die "apt-get install python3 python3-venv failed (no package mirror reachable?); install them and rerun"
    fi
    PYTHON3=python3
    base_python_ok || die "$want is still missing after installing python3 python3-venv; found: $(python3 --version 2>&1)"
  else
    die "$want is needed for $(rel "$VENV") (found: $("$PYTHON3" --version 2>/dev/null || echo "no $PYTHON3")); \
install it (Debian: sudo apt-get install -y python3 python3-venv), or set PYTHON3 to one, and rerun"
  fi
fi

# --- the venv -------------------------------------------------------------------------------
mkdir -p "$LOCAL_DIR"
# Two make commands of one checkout may get here at once: one installs, the other waits.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LOCAL_DIR/venv.lock"
  flock 9
  if current; then
    log "$(rel "$VENV"): up to date (installed by a concurrent run)"
    exit 0
  fi
fi

started=$SECONDS
log "installing ${PACKAGES[*]:0:7} (and their pinned dependencies) into $(rel "$VENV") from PyPI: first run about 20 s, 830 MB"
if [[ -e $VENV ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
  rm -rf "$VENV" # made from an interpreter that is gone
fi
if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON3" -m venv "$VENV" || { rm -rf "$VENV"; die "\`$PYTHON3 -m venv $(rel "$VENV")\` failed"; }
fi
rm -f "$STAMP"
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "${PACKAGES[@]}"; then
  die "pip install into $(rel "$VENV") failed (see above); check that PyPI is reachable, then rerun scripts/python-env.sh"
fi
# Prove the set works before recording it: every import, and DuckDB loading the shipped httpfs
# and delta extensions.
"$VENV/bin/python" - <<'PY' || die "the installed packages do not import or load (see above); remove $(rel "$VENV") and rerun"
import os, duckdb, duckdb_ext, pyarrow, pandas, polars, deltalake
con = duckdb.connect()
con.execute("SET extension_directory = ?", [os.path.join(list(duckdb_ext.__path__)[0], "extensions")])
con.execute("SET autoinstall_known_extensions = false")
con.execute("LOAD httpfs")
con.execute("LOAD delta")
PY
printf '%s' "${PACKAGES[*]}" >"$STAMP"
log "$(rel "$VENV"): ready in $((SECONDS - started)) s"
