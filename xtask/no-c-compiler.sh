#!/bin/sh
# A C compiler for `cargo xtask cross-check`: it only type-checks Rust for foreign targets, so C
# sources that build scripts compile (ring, zstd) are not compiled. Each object asked for is
# written empty; `cargo check` links nothing. `-?` fails, so the cc crate does not take this for
# MSVC's cl.exe; `-E` (compiler detection) prints nothing.
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift ;;
    -o*) out="${1#-o}" ;;
    -E) exit 0 ;;
    "-?") exit 1 ;;
  esac
  shift
done
if [ -n "$out" ]; then : > "$out"; fi
exit 0
