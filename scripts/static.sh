#!/usr/bin/env bash
# Builds a fully static `app` (x86_64-unknown-linux-musl, release) and checks it.
#
# Usage: scripts/static.sh            (or `make static`)
#
# - installs what is missing: the Rust target (`rustup target add x86_64-unknown-linux-musl`)
#   and musl-gcc (Debian package musl-tools, after `apt-get update`), which compiles the C code
#   of zstd-sys, lz4-sys and ring for musl;
# - builds target/x86_64-unknown-linux-musl/dist/app;
# - prints its size, and writes a stripped copy (no debug line tables) to target/static/app;
# - checks it is statically linked (`file`, `ldd`) and that it runs (`app --version`).
# Exit status: 0 when the binary is built and static; 1 otherwise, with what to do.
#
# Environment: CARGO (default cargo), STATIC_TARGET (default x86_64-unknown-linux-musl).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${STATIC_TARGET:-x86_64-unknown-linux-musl}
CARGO=${CARGO:-cargo}
BIN=$ROOT/target/$TARGET/dist/app
STRIPPED=$ROOT/target/static/app

log() { printf '[static] %s\n' "$*" >&2; }
die() { printf '[static] ERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. the Rust target ------------------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1; then
  if rustc --print target-libdir --target "$TARGET" 2>/dev/null | xargs -r test -d; then
    log "rustup not found; using the $TARGET standard library that rustc already has"
  else
    die "cannot install the musl target: rustup is not installed and rustc has no $TARGET \
standard library. Install Rust with rustup (https://rustup.rs), or your distribution's \
musl Rust std package, and rerun"
  fi
elif rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  log "Rust target $TARGET: installed"
else
  log "Rust target $TARGET: installing (rustup target add $TARGET)"
  if ! rustup target add "$TARGET"; then
    die "cannot install the musl target: \`rustup target add $TARGET\` failed (no network, or \
a toolchain without rustup-managed components?). Fix that and rerun \`make static\`"
  fi
fi

# --- 2. a C compiler for musl (C code in zstd-sys, lz4-sys and ring) ------------------------
if command -v musl-gcc >/dev/null 2>&1; then
  log "musl-gcc: $(command -v musl-gcc)"
else
  log "musl-gcc: missing; installing Debian package musl-tools"
  if ! command -v apt-get >/dev/null 2>&1; then
    die "cannot install the musl target's C compiler: musl-gcc is missing and there is no \
apt-get. Install musl-gcc (musl-tools / musl-dev / musl-gcc, depending on the distribution) and rerun"
  fi
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "musl-gcc is missing; run \
\`sudo apt-get update && sudo apt-get install -y musl-tools\` and rerun"
    SUDO=(sudo)
  fi
  if ! { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
         "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
           --no-install-recommends musl-tools >/dev/null; }; then
    die "cannot install the musl target's C compiler: \`apt-get install musl-tools\` failed \
(no network or no package mirror?). Install musl-tools and rerun"
  fi
  command -v musl-gcc >/dev/null 2>&1 || die "musl-tools is installed but musl-gcc is not on PATH"
fi

# --- 3. build ----------------------------------------------------------------------------
# cc-rs (used by zstd-sys, lz4-sys, ring) reads CC_<target>; musl-gcc wraps gcc with musl's
# headers and libc, so the C objects link into the static binary. Rust links with its own
# self-contained musl crt objects.
cc_var=CC_${TARGET//-/_}
export "$cc_var=${!cc_var:-musl-gcc}"
log "building: $CARGO build --profile dist --locked --target $TARGET --bin app  (slow the first time)"
start=$SECONDS
if ! "$CARGO" build --profile dist --locked --target "$TARGET" --bin app; then
  die "the static build failed (see the compiler output above). C dependencies are compiled \
with $cc_var=${!cc_var}; check that musl-gcc works (\`musl-gcc --version\`)"
fi
log "built in $((SECONDS - start)) s"
[[ -x $BIN ]] || die "the build reported success but $BIN is missing"

# --- 4. checks ---------------------------------------------------------------------------
file_out=$(file -b "$BIN")
ldd_out=$(ldd "$BIN" 2>&1 || true)
log "file: $file_out"
log "ldd:  $ldd_out"
case $file_out in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) die "$BIN is not statically linked (file says: $file_out)" ;;
esac
case $ldd_out in
  *"not a dynamic executable"* | *"statically linked"*) ;;
  *) die "$BIN depends on shared libraries (ldd says: $ldd_out)" ;;
esac
version=$("$BIN" --version) || die "$BIN does not run"

size=$(stat -c %s "$BIN")
ldd_out=$(echo "$ldd_out" | tr -s ' \t' ' ' | sed 's/^ //')
echo "static binary: ${BIN#"$ROOT"/}"
echo "  version: $version"
echo "  size:    $(numfmt --to=iec --suffix=B "$size") ($size bytes; keeps the line tables of the release profile, for backtraces)"
if command -v strip >/dev/null 2>&1 && mkdir -p "$(dirname "$STRIPPED")" &&
    strip -o "$STRIPPED.tmp" "$BIN" && mv "$STRIPPED.tmp" "$STRIPPED"; then
  stripped=$(stat -c %s "$STRIPPED")
  echo "  stripped copy: ${STRIPPED#"$ROOT"/}, $(numfmt --to=iec --suffix=B "$stripped") ($stripped bytes): the one to ship"
else
  rm -f "$STRIPPED.tmp"
  echo "  (strip not available: no stripped copy made)"
fi
echo "  linking: static (file: static-pie linked; ldd: $ldd_out)"
echo "  it needs nothing installed: copy it to any x86_64 Linux machine and run e.g. \`app --help\`"
