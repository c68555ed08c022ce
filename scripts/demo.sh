#!/usr/bin/env bash
# Sets up if needed, then trains the tiny demo model on the embedded demo data with SFT-GO
# (configs/demo_tiny.yaml) on this machine's CPU (or GPU), and plots the group losses.
# Extra arguments go to sftgo-train, e.g.: scripts/demo.sh --set train.epochs=1
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SFTGO_BUILD_DIR:-build}
scripts/setup.sh
BIN="$BUILD_DIR/bin/sftgo-train"
ARGS=(--config configs/demo_tiny.yaml)
if [ ! -f ../shared/data/llama3/tokenizer.json ]; then
  # No Llama-3 tokenizer beside the repo: use the small Llama-3-style one the project ships.
  echo "[demo] ../shared/data/llama3 not found: using data/demo/tokenizer (vocabulary 1408)" >&2
  ARGS+=(--set tokenizer.path=data/demo/tokenizer --set model.vocab_size=1408)
fi
echo "[demo] tokenizing a sample with the configured tokenizer" >&2
TOK=$("$BIN" config "${ARGS[@]:1}" --yaml | awk '/^tokenizer:/{t=1} t && /path:/{gsub(/"/,"",$2); print $2; exit}')
echo '{"text": "SFT-GO trains on the tokens that matter most."}' | "$BIN" tokenize --tokenizer "$TOK"
echo "[demo] training: $BIN ${ARGS[*]} $*" >&2
"$BIN" "${ARGS[@]}" "$@"
SETS=()  # only the --set pairs of the extra arguments matter for finding the run directory
while (($#)); do
  if [ "$1" = "--set" ] && (($# > 1)); then SETS+=(--set "$2"); shift; fi
  shift
done
RUN_DIR=$("$BIN" config "${ARGS[@]:1}" "${SETS[@]}" --yaml | awk '/^run:/{r=1} r && /output_dir:/{gsub(/"/,"",$2); print $2; exit}')
"$BIN" plot "$RUN_DIR" >/dev/null && echo "[demo] group-loss curves: $RUN_DIR/group_losses.svg" >&2
echo "[demo] metrics: $RUN_DIR/metrics.jsonl; checkpoints (Hugging Face format): $RUN_DIR/checkpoints/" >&2
