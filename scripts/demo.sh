#!/usr/bin/env bash
# Sets up if needed, then trains the tiny demo model on the embedded demo data with SFT-GO
# (configs/demo_tiny.yaml) on this machine's CPU (or GPU), and plots the group losses.
# Builds only sftgo-train (scripts/test.sh builds the tests and the rest) and prints how long each
# phase took at the end. Extra arguments go to sftgo-train, e.g.: scripts/demo.sh --set train.epochs=1
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
if [ ! -f ../shared/data/llama3/tokenizer.json ]; then
  # No Llama-3 tokenizer beside the repo: use the small Llama-3-style one the project ships.
  echo "[demo] ../shared/data/llama3 not found: using data/demo/tokenizer (vocabulary 1408)" >&2
  ARGS+=(--set tokenizer.path=data/demo/tokenizer --set model.vocab_size=1408)
fi
SETS=()  # only the --set pairs of the extra arguments matter for the data and the run directory
EXTRA=("$@")
while (($#)); do
  if [ "$1" = "--set" ] && (($# > 1)); then SETS+=(--set "$2"); shift; fi
  shift
done
echo "[demo] tokenizing a sample with the configured tokenizer" >&2
TOK=$("$BIN" config "${ARGS[@]:1}" ${SETS[@]+"${SETS[@]}"} --yaml | awk '/^tokenizer:/{t=1} t && /path:/{gsub(/"/,"",$2); print $2; exit}')
echo '{"text": "SFT-GO trains on the tokens that matter most."}' | "$BIN" tokenize --tokenizer "$TOK"
# Tokenizes the demo data into data.cache_dir (training then reads the cache) and shows its counts.
echo "[demo] preparing the data: $BIN data ${ARGS[*]} ${SETS[*]:-}" >&2
"$BIN" data "${ARGS[@]}" ${SETS[@]+"${SETS[@]}"}
phase_done data
echo "[demo] training: $BIN ${ARGS[*]} ${EXTRA[*]:-}" >&2
"$BIN" "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
RUN_DIR=$("$BIN" config "${ARGS[@]:1}" ${SETS[@]+"${SETS[@]}"} --yaml | awk '/^run:/{r=1} r && /output_dir:/{gsub(/"/,"",$2); print $2; exit}')
"$BIN" plot "$RUN_DIR" >/dev/null && echo "[demo] group-loss curves: $RUN_DIR/group_losses.svg" >&2
phase_done training
echo "[demo] metrics: $RUN_DIR/metrics.jsonl; checkpoints (Hugging Face format): $RUN_DIR/checkpoints/" >&2
# Phases that had nothing to do (packages present, venv and build up to date) take ~0 s.
awk -v a="$START" -v b="$(date +%s.%N)" '
  { printf "  %-10s %8.1f s\n", $1, $2 }
  END { printf "  %-10s %8.1f s\n", "total", b - a }' "$PHASE_LOG" |
  { echo "[demo] phase timings (wall clock):"; cat; } >&2
