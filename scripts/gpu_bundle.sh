#!/usr/bin/env bash
# Prepares on a build machine what a GPU machine without network or Debian -dev packages lacks for
# scripts/gpu_check.sh: the CUDA-enabled binaries (stripped), the non-torch, non-system shared
# libraries they load (sentencepiece, yaml-cpp, spdlog, fmt, pcre2, protobuf-lite, libstdc++, ...) and
# the Llama-3 tokenizer, in one directory of at most 60 MB. LibTorch, CUDA, cuDNN and NCCL are not in
# it: the GPU machine's torch 2.11 wheel provides them (gpu_check.sh puts its lib/ on LD_LIBRARY_PATH).
#
# Usage: scripts/gpu_bundle.sh [--out DIR] [--build DIR] [--no-build]
#   --out DIR    default build/gpu_bundle (ignored by git; the device tool carries it: carry
#                ["build/gpu_bundle"], then run scripts/gpu_check.sh there)
#   --build DIR  the CUDA-enabled build directory (default $SFTGO_BUILD_DIR or build)
#   --no-build   package what is built, do not build
# Writes DIR/MANIFEST.txt: git hash, sizes, and the newest glibc symbol version the binaries need
# (the GPU machine's glibc must be at least that: gpu_check.sh prints its own in logs/env.log).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${SFTGO_BUILD_DIR:-$ROOT/build}
OUT=$ROOT/build/gpu_bundle
DO_BUILD=1
LIMIT_MB=60
while (($#)); do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_bundle.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
BINS=(sftgo-train test_loss test_dist bench_loss)
log() { printf '[gpu_bundle] %s\n' "$*" >&2; }

[ -f "$BUILD/CMakeCache.txt" ] || { log "no configured build in $BUILD (run scripts/setup.sh)"; exit 1; }
if ((DO_BUILD)); then
  t0=$(date +%s)
  cmake --build "$BUILD" --target "${BINS[@]}"
  log "built ${BINS[*]} in $(($(date +%s) - t0)) s"
fi
VERSION=$("$BUILD/bin/sftgo-train" --version)
if ! grep -q 'CUDA kernels: on' <<< "$VERSION" || grep -q '^NCCL: none' <<< "$VERSION"; then
  log "error: $BUILD/bin/sftgo-train lacks the CUDA kernels or NCCL (configure with -DSFTGO_CUDA=ON; needs nvcc):"
  log "$VERSION"
  exit 1
fi

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib"
for b in "${BINS[@]}"; do
  cp "$BUILD/bin/$b" "$OUT/bin/$b"
  strip --strip-unneeded "$OUT/bin/$b"
done
# Shared libraries: everything ldd resolves except the C library family (the GPU machine's own),
# the driver, and what the torch wheel ships (LibTorch, CUDA runtime, cuDNN, NCCL, its libgomp).
is_system() {
  case $(basename "$1") in
    libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux* | libresolv.so* | libutil.so* | libcuda.so*) return 0 ;;
  esac
  case $1 in */site-packages/* | */torch/lib/*) return 0 ;; esac
  return 1
}
declare -A seen=()
for b in "${BINS[@]}"; do
  while read -r name _ path _; do
    [ -n "${path:-}" ] && [ -f "$path" ] || continue
    is_system "$path" && continue
    [ -n "${seen[$name]:-}" ] && continue
    seen[$name]=1
    cp -L "$path" "$OUT/lib/$name"
    strip --strip-unneeded "$OUT/lib/$name" 2> /dev/null || true
  done < <(ldd "$BUILD/bin/$b" | awk '$2 == "=>" {print $1, $2, $3, $4}')
done
# The Llama-3 tokenizer (the 3B-shaped run uses its 128256-token vocabulary) when this machine has it.
TOK=$ROOT/../shared/data/llama3
if [ -f "$TOK/tokenizer.json" ]; then
  mkdir -p "$OUT/llama3"
  cp "$TOK"/tokenizer.json "$OUT/llama3/"
  [ -f "$TOK/tokenizer_config.json" ] && cp "$TOK/tokenizer_config.json" "$OUT/llama3/"
fi

glibc=$(for f in "$OUT"/bin/* "$OUT"/lib/*; do objdump -T "$f" 2> /dev/null; done |
  grep -oE 'GLIBC_[0-9]+\.[0-9]+' | sort -uV | tail -1)
total_kb=$(du -sk "$OUT" | cut -f1)
{
  echo "sftgo GPU bundle, git $(git -C "$ROOT" rev-parse --short=12 HEAD 2> /dev/null || echo unknown), built $(date -u +%Y-%m-%dT%H:%MZ) on $(. /etc/os-release 2> /dev/null && echo "$PRETTY_NAME")"
  echo "needs: glibc >= ${glibc#GLIBC_}, a python with torch $("$BUILD/bin/sftgo-train" --version | sed -n 's/^LibTorch //p') (LibTorch, CUDA, NCCL from its wheel)"
  "$BUILD/bin/sftgo-train" --version
  echo "total: $((total_kb / 1024)) MB"
  (cd "$OUT" && du -k bin/* lib/* llama3/* 2> /dev/null | sort -rn)
} > "$OUT/MANIFEST.txt"
cat "$OUT/MANIFEST.txt" >&2
if ((total_kb > LIMIT_MB * 1024)); then
  log "error: the bundle is $((total_kb / 1024)) MB, over the $LIMIT_MB MB limit"
  exit 1
fi
log "bundle ready: $OUT ($((total_kb / 1024)) MB). On the GPU machine: scripts/gpu_check.sh --out gpu_check_out"
