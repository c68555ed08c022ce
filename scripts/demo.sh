#!/usr/bin/env bash
# Sets up if needed, then trains the tiny demo model on the embedded demo data with SFT-GO
# (configs/demo_tiny.yaml) on this machine's CPU (or GPU), and plots the group losses.
# Builds only sftgo-train (scripts/test.sh builds the tests and the rest) and prints how long each
# phase took at the end. Extra arguments go to sftgo-train, e.g.: scripts/demo.sh --set train.epochs=1
#
# Every call trains the demo from scratch: when the run directory (runs/demo_tiny) already holds an
# earlier demo run, it is replaced (sftgo-train --overwrite) and a line says so. To keep it, pass
# --set run.output_dir=runs/other; to continue it instead, pass --resume auto. A directory that holds
# a run of another name is never replaced: sftgo-train refuses it and says what to do.
# Tokenizer: the config's data/demo/tokenizer (shipped). A full Llama-3 tokenizer at
# ../shared/data/llama3 (this project's test fixtures, not part of a clone) is used instead when present.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SFTGO_BUILD_DIR:-build}
PHASE_LOG=$(mktemp)
trap 'rm -f "$PHASE_LOG"' EXIT
START=$(date +%s.%N)
SFTGO_PHASE_LOG=$PHASE_LOG scripts/setup.sh --target sftgo-train
PHASE_START=$(date +%s.%N)
phase_done() {
  local now
  now=$(date +%s.%N)
  awk -v n="$1" -v a="$PHASE_START" -v b="$now" 'BEGIN{printf "%s %.1f\n", n, b - a}' >> "$PHASE_LOG"
  PHASE_START=$now
}

BIN="$BUILD_DIR/bin/sftgo-train"
ARGS=(--config configs/demo_tiny.yaml)
if [ -f ../shared/data/llama3/tokenizer.json ]; then
  echo "[demo] using the Llama-3 tokenizer in ../shared/data/llama3 (vocabulary 128256) instead of data/demo/tokenizer" >&2
  ARGS+=(--set tokenizer.path=../shared/data/llama3 --set model.vocab_size=128256)
fi
SETS=()  # only the --set pairs of the extra arguments matter for the data and the run directory
EXTRA=("$@")
CHOSEN=0  # the caller chose what happens to an existing run (--resume / --overwrite)
while (($#)); do
  if [ "$1" = "--set" ] && (($# > 1)); then SETS+=(--set "$2"); shift; fi
  case "$1" in --resume|--resume=*|--overwrite) CHOSEN=1 ;; esac
  shift
done
# resolved KEY SECTION: the value of SECTION.KEY in the resolved config of this call.
resolved() {
  "$BIN" config "${ARGS[@]:1}" ${SETS[@]+"${SETS[@]}"} --yaml |
    awk -v s="$2:" -v k="$1:" '$1 == s {r=1; next} /^[^ ]/ {r=0} r && $1 == k {gsub(/"/,"",$2); print $2; exit}'
}
echo "[demo] tokenizing a sample with the configured tokenizer" >&2
TOK=$(resolved path tokenizer)
echo '{"text": "SFT-GO trains on the tokens that matter most."}' | "$BIN" tokenize --tokenizer "$TOK"
# Tokenizes the demo data into data.cache_dir (training then reads the cache) and shows its counts.
echo "[demo] preparing the data: $BIN data ${ARGS[*]} ${SETS[*]:-}" >&2
"$BIN" data "${ARGS[@]}" ${SETS[@]+"${SETS[@]}"}
phase_done data
RUN_DIR=$(resolved output_dir run)
RUN_NAME=$(resolved name run)
# An earlier demo run in the run directory (its resolved_config.yaml has this run's name): replace it.
if ((!CHOSEN)) && { [ -s "$RUN_DIR/metrics.jsonl" ] || [ -d "$RUN_DIR/checkpoints" ]; }; then
  OLD_NAME=$(awk '$1 == "run:" {r=1; next} /^[^ ]/ {r=0} r && $1 == "name:" {gsub(/"/,"",$2); print $2; exit}' \
    "$RUN_DIR/resolved_config.yaml" 2>/dev/null || true)
  if [ "$OLD_NAME" = "$RUN_NAME" ]; then
    echo "[demo] $RUN_DIR holds an earlier $RUN_NAME run: replacing it (--overwrite; keep it with --set run.output_dir=runs/other, continue it with scripts/demo.sh --resume auto)" >&2
    EXTRA+=(--overwrite)
  fi
fi
echo "[demo] training: $BIN ${ARGS[*]} ${EXTRA[*]:-}" >&2
"$BIN" "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
"$BIN" plot "$RUN_DIR" >/dev/null && echo "[demo] group-loss curves: $RUN_DIR/group_losses.svg" >&2
phase_done training
echo "[demo] metrics: $RUN_DIR/metrics.jsonl; checkpoints (Hugging Face format): $RUN_DIR/checkpoints/" >&2
# Phases that had nothing to do (packages present, venv and build up to date) take ~0 s.
awk -v a="$START" -v b="$(date +%s.%N)" '
  { printf "  %-10s %8.1f s\n", $1, $2 }
  END { printf "  %-10s %8.1f s\n", "total", b - a }' "$PHASE_LOG" |
  { echo "[demo] phase timings (wall clock):"; cat; } >&2
