#!/usr/bin/env bash
# Installs everything sftgo needs on a fresh Debian 12 machine and builds it. Idempotent: a second
# run only rebuilds what changed.
# Usage: scripts/setup.sh [--no-build] [--target T]...
#   --no-build       packages and venv only
#   --target T       build only target T and what it needs (repeatable; e.g. --target sftgo-train,
#                    what scripts/demo.sh builds); without it every target is built (tests too)
#   SFTGO_BUILD_DIR  build directory (default: build)
#   SFTGO_CUDA       AUTO (default: CUDA kernels when nvcc exists), ON or OFF
#   SFTGO_JOBS       parallel build jobs (default: nproc)
#   SFTGO_PHASE_LOG  file to append "phase seconds" lines to (packages, python, configure, compile)
#   SFTGO_INSTALLER  uv (default; falls back to pip) or pip: what installs scripts/requirements.txt
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${SFTGO_BUILD_DIR:-build}
JOBS=${SFTGO_JOBS:-$(nproc)}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
NO_BUILD=0
TARGETS=()  # cmake --build arguments: --target T ...
NAMES=()
while (($#)); do
  case "$1" in
    --no-build) NO_BUILD=1 ;;
    --target)
      (($# > 1)) || { echo "setup.sh: --target needs a target name" >&2; exit 2; }
      TARGETS+=(--target "$2"); NAMES+=("$2"); shift ;;
    *) echo "setup.sh: unknown argument '$1' (usage: scripts/setup.sh [--no-build] [--target T]...)" >&2; exit 2 ;;
  esac
  shift
done
PHASE_START=$(date +%s.%N)
# Ends the phase that started at PHASE_START: appends "name seconds" to SFTGO_PHASE_LOG when set.
phase_done() {
  local now
  now=$(date +%s.%N)
  if [ -n "${SFTGO_PHASE_LOG:-}" ]; then
    awk -v n="$1" -v a="$PHASE_START" -v b="$now" 'BEGIN{printf "%s %.1f\n", n, b - a}' >> "$SFTGO_PHASE_LOG"
  fi
  PHASE_START=$now
}

# 1. Debian packages (compilers, CMake and the C++ libraries).
APT_PACKAGES=(build-essential cmake ninja-build pkg-config ccache git python3 python3-venv python3-pip
  libsentencepiece-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libyaml-cpp-dev
  libpcre2-dev libgtest-dev libgmock-dev libopenmpi-dev openmpi-bin libgloo-dev libcairo2-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
phase_done packages

# 2. Python venv inside the repo (ignored by git) with the pinned torch wheel and the references.
PY=${SFTGO_PYTHON:-python3}
UV_PIN=uv==0.13.9  # the installer, pinned like the wheels it installs
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
REQ_HASH=$(sha256sum scripts/requirements.txt | cut -c1-16)
if [ "$(cat .venv/.sftgo-requirements 2>/dev/null)" != "$REQ_HASH" ]; then
  log "installing Python requirements (torch 2.11.0 and its CUDA 13 wheels are ~5 GB)"
  # uv (from PyPI) downloads and unpacks the wheels in parallel: the requirements install in ~35 s
  # instead of pip's ~200 s on 2 cores (docs/benchmarks.md, "Day one"). pip stays the fallback, and
  # SFTGO_INSTALLER=pip forces it. uv reads UV_* settings, so the usual PIP_* ones are passed on.
  installed=0
  uv_ok=0
  if [ "${SFTGO_INSTALLER:-uv}" = uv ]; then
    if .venv/bin/python -m pip install -q "$UV_PIN"; then uv_ok=1; else log "could not install $UV_PIN; using pip"; fi
  fi
  if ((uv_ok)); then
    if env ${PIP_INDEX_URL:+UV_INDEX_URL="${UV_INDEX_URL:-$PIP_INDEX_URL}"} \
        ${PIP_EXTRA_INDEX_URL:+UV_EXTRA_INDEX_URL="${UV_EXTRA_INDEX_URL:-$PIP_EXTRA_INDEX_URL}"} \
        ${PIP_CERT:+SSL_CERT_FILE="${SSL_CERT_FILE:-$PIP_CERT}"} \
        .venv/bin/uv pip install --quiet --python .venv/bin/python -r scripts/requirements.txt; then
      installed=1
    else
      log "uv could not install the requirements; trying pip"
    fi
  fi
  if ((!installed)); then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r scripts/requirements.txt
  fi
  echo "$REQ_HASH" > .venv/.sftgo-requirements
fi
phase_done python

if ((NO_BUILD)); then exit 0; fi

# 3. Configure and build (Release, Ninja, ccache when present).
TORCH_PREFIX=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  log "configuring $BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DSFTGO_CUDA="${SFTGO_CUDA:-AUTO}" \
    -DPython3_EXECUTABLE="$ROOT/.venv/bin/python" > "$BUILD_DIR.configure.log" 2>&1 ||
    { cat "$BUILD_DIR.configure.log"; exit 1; }
fi
phase_done configure
log "building ${NAMES[*]:-every target} in $BUILD_DIR with $JOBS jobs"
cmake --build "$BUILD_DIR" -j "$JOBS" ${TARGETS[@]+"${TARGETS[@]}"}
phase_done compile
log "done: $BUILD_DIR/bin/sftgo-train"
