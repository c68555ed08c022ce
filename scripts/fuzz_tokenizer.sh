#!/usr/bin/env bash
# Fuzzes the tokenizer (fuzz/fuzz_tokenizer.cpp): tokenizer.json loading (first byte even) and
# encode/decode round trips with the real Llama-3 tokenizer (first byte odd).
#   usage: scripts/fuzz_tokenizer.sh [SECONDS] [extra libFuzzer flags...]   (-runs=N stops earlier)
# The odd mode needs ../shared/data/llama3 (or SFTGO_FUZZ_TOKENIZER=DIR); the demo tokenizer is used
# when neither exists.
source "$(dirname "$0")/fuzz_common.sh"
SECONDS_TO_RUN=${1:-300}
shift || true
SHARED_TOK=$(realpath -m ../shared/data/llama3)
[[ -f $SHARED_TOK/tokenizer.json ]] || SHARED_TOK=$(realpath data/demo/tokenizer)
fuzz_build fuzz_tokenizer fuzz/fuzz_tokenizer.cpp src/tokenizer/*.cpp -- -Isrc/tokenizer \
  -DSFTGO_FUZZ_DEFAULT_TOKENIZER="\"$SHARED_TOK\"" -lpcre2-8
# Seeds: the fixture tokenizer (mode byte 0) and a few texts (mode byte 1).
mkdir -p "$OUT/seeds_fuzz_tokenizer"
printf '\0' | cat - tests/tokenizer/fixtures/tiny/tokenizer.json > "$OUT/seeds_fuzz_tokenizer/seed_json"
for t in "hello world" "<|eot_id|>x's 12345  \n\n" "naïve 你好 👨‍👩‍👧" "\xff\xfe"; do
  printf '\1%b' "$t" > "$OUT/seeds_fuzz_tokenizer/seed_$(printf '%s' "$t" | md5sum | cut -c1-8)"
done
fuzz_run fuzz_tokenizer "$SECONDS_TO_RUN" -max_len=65536 "$@"
