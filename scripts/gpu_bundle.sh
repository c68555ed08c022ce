#!/usr/bin/env bash
# Prepares on a build machine what a GPU machine without network or Debian -dev packages lacks for
# scripts/gpu_check.sh: the CUDA-enabled binaries (stripped), the non-torch, non-system shared
# libraries they load (sentencepiece, yaml-cpp, spdlog, fmt, pcre2, libstdc++, ...), the Llama-3
# tokenizer, and the wheels of the loss peers the kit compares against (Liger-Kernel and
# cut-cross-entropy: pure Python on Triton), in one directory of at most 40 MB. LibTorch, CUDA, cuDNN
# and NCCL are not in it: the GPU machine's torch 2.11 wheel provides them.
#
# Layout: bin/NAME is a small wrapper that runs libexec/NAME with lib/ and the torch wheel's lib/ on
# LD_LIBRARY_PATH for that process alone, so the bundle's libstdc++ never reaches python,
# transformers or compute-sanitizer. The torch lib/ is $SFTGO_TORCH_LIB (gpu_check.sh sets it), else
# asked from ${SFTGO_PYTHON:-python3}.
#
# Usage: scripts/gpu_bundle.sh [--out DIR] [--build DIR] [--no-build] [--wheels DIR]
#   --out DIR     default build/gpu_bundle (ignored by git; copy it, with the source tree, to the GPU machine)
#   --build DIR   the CUDA-enabled build directory (default $SFTGO_BUILD_DIR or build)
#   --no-build    package what is built, do not build
#   --wheels DIR  take the peer wheels from DIR instead of downloading them (pip download, PyPI)
# Writes DIR/MANIFEST.txt: git hash, sizes, and the newest glibc symbol version the binaries need
# (the GPU machine's glibc must be at least that: gpu_check.sh prints its own in its env log).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${SFTGO_BUILD_DIR:-$ROOT/build}
OUT=$ROOT/build/gpu_bundle
DO_BUILD=1
WHEELS=""
LIMIT_MB=40  # the bundle travels with the source tree; keep both well under 64 MiB
# The peers, pinned so that a later run compares against the same code.
PEER_WHEELS=(liger-kernel==0.8.5 cut-cross-entropy==25.1.1)
while (($#)); do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    --wheels) WHEELS=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
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
for b in "${BINS[@]}"; do
  [ -x "$BUILD/bin/$b" ] || { log "error: $BUILD/bin/$b is not built (drop --no-build)"; exit 1; }
done

# The peers' wheels: pure Python (py3-none-any), no dependencies beyond torch and Triton, which the
# GPU machine's torch wheel brings; gpu_check.sh unpacks them into its scratch folder. Fetched first,
# into a temporary folder (--wheels may name the old bundle's wheels/).
WHEEL_TMP=$(mktemp -d)
trap 'rm -rf "$WHEEL_TMP"' EXIT
if [ -n "$WHEELS" ]; then
  for w in "${PEER_WHEELS[@]}"; do
    f=$(ls "$WHEELS"/"$(echo "${w%%==*}" | tr - _)"-"${w##*==}"-*.whl 2> /dev/null | head -1)
    [ -n "$f" ] || { log "error: no wheel for $w in $WHEELS"; exit 1; }
    cp "$f" "$WHEEL_TMP/"
  done
else
  PIP=${SFTGO_PYTHON:-$ROOT/.venv/bin/python}
  [ -x "$PIP" ] || PIP=python3
  "$PIP" -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEEL_TMP" "${PEER_WHEELS[@]}" ||
    { log "error: pip download of ${PEER_WHEELS[*]} failed (no network? give --wheels DIR)"; exit 1; }
fi

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/libexec" "$OUT/lib" "$OUT/wheels"
for b in "${BINS[@]}"; do
  cp "$BUILD/bin/$b" "$OUT/libexec/$b"
  strip --strip-unneeded "$OUT/libexec/$b"
  cat > "$OUT/bin/$b" << EOF
#!/bin/sh
# sftgo GPU bundle: runs libexec/$b with the bundle's libraries and the torch wheel's, for it alone.
here=\$(CDPATH= cd -- "\$(dirname -- "\$0")/.." && pwd)
torch_lib=\${SFTGO_TORCH_LIB:-}
if [ -z "\$torch_lib" ]; then
  torch_lib=\$("\${SFTGO_PYTHON:-python3}" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
    { echo "$b (bundle): no python with torch to take LibTorch from; set SFTGO_TORCH_LIB or SFTGO_PYTHON" >&2; exit 1; }
fi
LD_LIBRARY_PATH="\$here/lib:\$torch_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/libexec/$b" "\$@"
EOF
  chmod +x "$OUT/bin/$b"
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
# The Llama-3 tokenizer (the 3B and 8B-shaped runs use its 128256-token vocabulary) when this machine has it.
TOK=$ROOT/../shared/data/llama3
if [ -f "$TOK/tokenizer.json" ]; then
  mkdir -p "$OUT/llama3"
  cp "$TOK"/tokenizer.json "$OUT/llama3/"
  [ -f "$TOK/tokenizer_config.json" ] && cp "$TOK/tokenizer_config.json" "$OUT/llama3/"
fi
for f in "$WHEEL_TMP"/*.whl; do
  case $f in *-py3-none-any.whl) mv "$f" "$OUT/wheels/" ;; *) log "error: $f is not a pure-Python wheel"; exit 1 ;; esac
done

# The architectures of the kernels really in sftgo-train (cuobjdump: the CUDA toolkit's, or the copy in
# Triton's wheel), else what the build was configured with.
kernel_archs() {
  local tool
  tool=$(command -v cuobjdump || ls /usr/local/cuda/bin/cuobjdump "$ROOT"/.venv/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump 2> /dev/null | head -1)
  if [ -n "$tool" ]; then
    "$tool" --list-elf "$OUT/libexec/sftgo-train" 2> /dev/null | grep -oE 'sm_[0-9]+[a-z]?' | sort -uV | tr '\n' ' '
    echo "(cuobjdump --list-elf)"
  else
    echo "$(sed -n 's/^SFTGO_CUDA_ARCHITECTURES:[A-Z]*=//p' "$BUILD/CMakeCache.txt") (configured; no cuobjdump to check)"
  fi
}
glibc=$(for f in "$OUT"/libexec/* "$OUT"/lib/*; do objdump -T "$f" 2> /dev/null; done |
  grep -oE 'GLIBC_[0-9]+\.[0-9]+' | sort -uV | tail -1)
total_kb=$(du -sk "$OUT" | cut -f1)
{
  echo "sftgo GPU bundle, git $(git -C "$ROOT" rev-parse --short=12 HEAD 2> /dev/null || echo unknown), built $(date -u +%Y-%m-%dT%H:%MZ) on $(. /etc/os-release 2> /dev/null && echo "$PRETTY_NAME")"
  echo "needs: glibc >= ${glibc#GLIBC_}, a python with torch $("$BUILD/bin/sftgo-train" --version | sed -n 's/^LibTorch //p') (LibTorch, CUDA, NCCL from its wheel)"
  echo "CUDA kernels built for: $(kernel_archs)"
  "$BUILD/bin/sftgo-train" --version
  echo "peer wheels: $(cd "$OUT/wheels" && ls | tr '\n' ' ')"
  echo "total: $((total_kb / 1024)) MB (limit $LIMIT_MB MB)"
  # nullglob: llama3/ exists only when ../shared held the Llama-3 tokenizer (a plain clone has none).
  (cd "$OUT" && shopt -s nullglob && du -k libexec/* lib/* llama3/* wheels/* | sort -rn)
} > "$OUT/MANIFEST.txt"
cat "$OUT/MANIFEST.txt" >&2
if ((total_kb > LIMIT_MB * 1024)); then
  log "error: the bundle is $((total_kb / 1024)) MB, over the $LIMIT_MB MB limit"
  exit 1
fi
log "bundle ready: $OUT ($((total_kb / 1024)) MB). On the GPU machine: scripts/gpu_check.sh --out gpu_check_out"
