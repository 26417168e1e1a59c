#!/usr/bin/env bash
# The collection as users get it: the tarball that `ansible-galaxy collection build` makes
# from this checkout, and that tarball installed into a collections path, offline.
#
#   bash scripts/collection.sh build OUTDIR
#   bash scripts/collection.sh install DEST [OUTDIR]
#
# `build` writes the tarball into OUTDIR. `install` builds it into OUTDIR (else into a new
# directory under ${TMPDIR:-/tmp}, which the caller removes) and installs it into the
# collections path DEST: DEST/ansible_collections/mv6/transition. Both print the tarball's
# path on the last line of their standard output; the tools' own output goes to stderr.
# `install` adds --offline --no-deps: the collections this one depends on (community.libvirt,
# ansible.posix, ansible.utils) come from the PyPI `ansible` package, and Galaxy is not
# reachable here. Works from any directory, with the tools of the checkout's .venv
# (scripts/setup.sh). Exits non-zero, saying why, on failure.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
galaxy="$top/.venv/bin/ansible-galaxy"

die() {
  printf 'collection.sh: %s\n' "$*" >&2
  exit 1
}

usage() {
  printf 'usage: bash scripts/collection.sh build OUTDIR\n' >&2
  printf '       bash scripts/collection.sh install DEST [OUTDIR]\n' >&2
  exit 2
}

# Absolute path of a directory, created if missing.
directory() {
  mkdir -p -- "$1" || die "cannot create the directory $1"
  (cd -- "$1" && pwd)
}

# Builds the tarball into $1 and prints its path.
build() {
  local out=$1 log tarball
  log=$(mktemp)
  # --force: a tarball of the same version already in OUTDIR is replaced, not kept.
  if ! "$galaxy" collection build --force --output-path "$out" "$top" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "ansible-galaxy collection build failed for $top"
  fi
  tarball=$(sed -n 's/^Created collection for mv6\.transition at //p' "$log" | tail -n 1)
  rm -f "$log"
  [[ -n "$tarball" && -f "$tarball" ]] || die "ansible-galaxy collection build wrote no tarball in $out"
  printf '%s\n' "$tarball"
}

[[ -x "$galaxy" ]] || die "$galaxy is missing: run bash scripts/setup.sh (make setup) first"
(($# >= 1)) || usage

case $1 in
  build)
    (($# == 2)) || usage
    out=$(directory "$2")
    build "$out"
    ;;
  install)
    (($# == 2 || $# == 3)) || usage
    dest=$(directory "$2")
    if (($# == 3)); then
      out=$(directory "$3")
    else
      out=$(mktemp -d "${TMPDIR:-/tmp}/mv6-collection.XXXXXX") || die "cannot create a temporary directory"
      # removed again if anything below fails; kept, with the tarball, on success
      trap 'rm -rf -- "$out"' EXIT
    fi
    tarball=$(build "$out")
    # --force: a collection already installed in DEST is replaced by this build.
    # ANSIBLE_COLLECTIONS_PATH=DEST: ansible-galaxy warns about a path it is not configured with.
    if ! ANSIBLE_COLLECTIONS_PATH="$dest" "$galaxy" collection install --offline --no-deps \
      --force -p "$dest" "$tarball" >&2; then
      die "ansible-galaxy collection install of $tarball into $dest failed"
    fi
    installed="$dest/ansible_collections/mv6/transition"
    [[ -f "$installed/MANIFEST.json" ]] || die "$installed/MANIFEST.json is missing after the install"
    printf 'installed %s\n' "$installed" >&2
    trap - EXIT
    printf '%s\n' "$tarball"
    ;;
  *)
    usage
    ;;
esac
