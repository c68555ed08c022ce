#!/usr/bin/env bash
# Shared by scripts/fuzz_<target>.sh (sourced, not run). Builds one libFuzzer target with clang
# (libFuzzer + ASan + UBSan) straight from the sources (the target's, plus all of src/core, which
# needs no LibTorch) into $SFTGO_FUZZ_DIR (default build-fuzz/),
# rebuilding only when a source or header is newer than the binary, then runs it at low priority.
# Needs clang and libclang-rt-14-dev (apt-get install -y clang libclang-rt-14-dev).
#   fuzz_build NAME SOURCES... [-- EXTRA COMPILER/LINKER ARGS...]
#   fuzz_run NAME SECONDS [libFuzzer flags...]    corpus: $SFTGO_FUZZ_CORPUS or $OUT/corpus_NAME
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${SFTGO_FUZZ_DIR:-build-fuzz}
mkdir -p "$OUT"

fuzz_have_clang() {
  command -v clang++ >/dev/null || return 1
  # libFuzzer's runtime ships in libclang-rt-*-dev on Debian; without it linking fails.
  echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
    clang++ -x c++ -fsanitize=fuzzer - -o "$OUT/.probe" >/dev/null 2>&1
}

fuzz_build() {
  local name=$1; shift
  local srcs=() extra=()
  while (($#)); do
    if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi
    srcs+=("$1"); shift
  done
  local bin="$OUT/$name"
  # Stale when the binary is missing or older than any source, header or this script.
  local dirs=(include src/core scripts/fuzz_common.sh "$0")
  local s
  for s in "${srcs[@]}"; do dirs+=("$(dirname "$s")"); done
  if [[ -x $bin ]] && [[ -z $(find "${dirs[@]}" -newer "$bin" \( -name '*.cpp' -o -name '*.h' -o -name '*.sh' \) \
        -print -quit 2>/dev/null) ]]; then
    return 0
  fi
  echo "fuzz: building $bin" >&2
  nice -n 10 clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Iinclude "${srcs[@]}" src/core/*.cpp "${extra[@]}" -lspdlog -lfmt -o "$bin.tmp"
  mv "$bin.tmp" "$bin"
}

fuzz_run() {
  local name=$1 seconds=$2; shift 2
  local corpus=${SFTGO_FUZZ_CORPUS:-$OUT/corpus_$name}
  mkdir -p "$corpus"
  cp -n "$OUT/seeds_$name"/* "$corpus"/ 2>/dev/null || true
  mkdir -p "$OUT/artifacts_$name"
  # detect_leaks=0: LeakSanitizer's stop-the-world tracer hung for minutes in this container when the
  # RSS limit fired, so the crashing input was never written; leaks are not what these targets hunt.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} exec nice -n 10 "$OUT/$name" "$corpus" -max_total_time="$seconds" \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=30 -artifact_prefix="$OUT/artifacts_$name/" \
    -print_final_stats=1 "$@"
}
