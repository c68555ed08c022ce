#!/usr/bin/env bash
# Fuzzes the SFT data readers and chat templates (fuzz/fuzz_jsonl.cpp).
#   usage: scripts/fuzz_jsonl.sh [SECONDS] [extra libFuzzer flags...]   (-runs=N stops earlier)
source "$(dirname "$0")/fuzz_common.sh"
SECONDS_TO_RUN=${1:-300}
shift || true
fuzz_build fuzz_jsonl fuzz/fuzz_jsonl.cpp src/data/reader.cpp src/data/template.cpp src/tokenizer/*.cpp \
  -- -Isrc/tokenizer -DSFTGO_FUZZ_TOKENIZER="\"$(realpath data/demo/tokenizer)\"" -lpcre2-8
# Seeds: the demo data's first records and one record of each format (mode bytes: see the target).
S="$OUT/seeds_fuzz_jsonl"
mkdir -p "$S"
{ printf '\0'; head -c 3000 data/demo/demo_sft.jsonl | head -n 3; } > "$S/demo"
printf '\2{"conversations": ["Hi", "Hello!", "2+2?", "4"]}\n' > "$S/lima"
printf '\4[{"instruction": "Add.", "input": "1 and 2", "output": "3"}]\n' > "$S/alpaca"
printf '\6{"messages": [{"role": "system", "content": " s "}, {"role": "user", "content": "\\u00a0q"}, {"role": "assistant", "content": "a"}]}\n' > "$S/chat"
printf '\1{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n{"n": 1e999999}\n' > "$S/sharegpt_skip"
fuzz_run fuzz_jsonl "$SECONDS_TO_RUN" -max_len=8192 "$@"
