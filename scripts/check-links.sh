#!/usr/bin/env bash
# Checks every relative Markdown link in README.md, CHANGELOG.md, BENCHMARKS.md and docs/*.md
# (or in the files given as arguments): the file or directory it points at exists, and its
# `#anchor`, if any, is a heading of the target Markdown file. Anchors are slugged as GitHub does:
# the heading's text lowercased, every character that is not a letter, digit, space, '-' or '_'
# removed, each space turned into '-', and "-1", "-2", … added to repeated headings.
# Links in fenced code blocks and inline code are not links and are skipped; so are absolute URLs
# (https:, mailto:, …). Needs only bash, sed and grep (it runs in `make lint`, before anything
# else is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export LC_ALL=C.UTF-8 # [:alnum:] and ${x,,} must know accented letters (ç, õ, Í)

if (($#)); then
  files=("$@")
else
  files=(README.md CHANGELOG.md BENCHMARKS.md docs/*.md)
fi

# prose FILE: FILE with fenced code blocks and inline code blanked out (line numbers kept).
prose() {
  sed -E '/^ {0,3}(```|~~~)/,/^ {0,3}(```|~~~)/ s/.*//; s/`[^`]*`//g' "$1"
}

# load_anchors FILE: sets anchor_cache[FILE] to the anchor of every heading of FILE, one a line.
declare -A anchor_cache=()
load_anchors() {
  local file=$1
  if [[ -z ${anchor_cache[$file]+set} ]]; then
    local heading slug out=""
    declare -A seen=()
    # Headings keep their inline code as text: blank only the fenced blocks here.
    while IFS= read -r heading; do
      heading=$(sed -E 's/^#{1,6}[[:space:]]+//; s/[[:space:]]+#+[[:space:]]*$//; s/!?\[([^]]*)\]\([^)]*\)/\1/g' <<<"$heading")
      heading=${heading,,}
      slug=$(sed -E 's/[^[:alnum:] _-]//g; s/ /-/g' <<<"$heading")
      if [[ -n ${seen["k$slug"]+set} ]]; then
        seen["k$slug"]=$((seen["k$slug"] + 1))
        slug="$slug-${seen["k$slug"]}"
      else
        seen["k$slug"]=0
      fi
      out+="$slug"$'\n'
    done < <(sed -E '/^ {0,3}(```|~~~)/,/^ {0,3}(```|~~~)/ s/.*//' "$file" | grep -E '^#{1,6}[[:space:]]' || true)
    anchor_cache[$file]=$out
  fi
}

# url_decode TEXT: %XX escapes decoded (anchors and paths may be written either way).
url_decode() {
  printf '%b' "${1//%/\\x}"
}

errors=0 checked=0 anchored=0
fail() {
  echo "$1: broken link ($2): $3" >&2
  errors=$((errors + 1))
}

for file in "${files[@]}"; do
  [[ -f $file ]] || { echo "$file: no such file" >&2; errors=$((errors + 1)); continue; }
  dir=$(dirname "$file")
  while IFS= read -r hit; do
    lineno=${hit%%:*}
    target=${hit#*:}
    target=${target#\](}
    target=${target%)}
    target=${target%% \"*} # a title: [text](path "title")
    target=${target#<}
    target=${target%>}
    # Absolute URLs (https:, http:, mailto:, …) and protocol-relative ones are not ours to check.
    if [[ $target =~ ^[A-Za-z][A-Za-z0-9+.-]*: || $target == //* ]]; then continue; fi
    checked=$((checked + 1))
    path=${target%%#*}
    anchor=""
    [[ $target == *#* ]] && anchor=${target#*#}
    path=$(url_decode "$path")
    if [[ -z $path ]]; then
      resolved=$file
    elif [[ $path == /* ]]; then
      resolved=.$path # GitHub reads a leading / as the repository root
    else
      resolved=$dir/$path
    fi
    if [[ ! -e $resolved ]]; then
      fail "$file:$lineno" "$target" "$resolved does not exist"
      continue
    fi
    [[ -n $anchor ]] || continue
    anchored=$((anchored + 1))
    if [[ ! -f $resolved || $resolved != *.md ]]; then
      fail "$file:$lineno" "$target" "an anchor into $resolved, which is not a Markdown file"
      continue
    fi
    anchor=$(url_decode "$anchor")
    load_anchors "$resolved"
    if ! grep -qxF -- "$anchor" <<<"${anchor_cache[$resolved]}"; then
      fail "$file:$lineno" "$target" "no heading of $resolved has the anchor #$anchor"
    fi
  done < <(prose "$file" | grep -noE '\]\([^)[:space:]]+( "[^"]*")?\)' || true)
done

if ((errors)); then
  echo "link check: $errors broken link(s) among $checked relative links in ${#files[@]} files" >&2
  exit 1
fi
echo "link check: $checked relative links ($anchored with an anchor) in ${#files[@]} files, all resolve"
