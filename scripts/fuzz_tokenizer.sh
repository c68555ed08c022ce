#!/usr/bin/env bash
# Builds fuzz/fuzz_tokenizer.cpp with clang (libFuzzer + ASan + UBSan) straight from the sources
# and runs it.   usage: scripts/fuzz_tokenizer.sh [SECONDS] [extra libFuzzer flags...]
# Needs clang and libclang-rt-14-dev (apt-get install -y clang libclang-rt-14-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-300}
shift || true
OUT=${SFTGO_FUZZ_DIR:-build-fuzz}
mkdir -p "$OUT" "$OUT/corpus"
SHARED_TOK=$(realpath -m ../shared/data/llama3)
clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Iinclude -Isrc/tokenizer -DSFTGO_FUZZ_DEFAULT_TOKENIZER="\"$SHARED_TOK\"" \
  fuzz/fuzz_tokenizer.cpp src/tokenizer/*.cpp src/core/error.cpp src/core/strings.cpp \
  -lpcre2-8 -o "$OUT/fuzz_tokenizer"
# Seeds: the fixture tokenizer (mode byte 0) and a few texts (mode byte 1).
printf '\0' | cat - tests/tokenizer/fixtures/tiny/tokenizer.json > "$OUT/corpus/seed_json"
for t in "hello world" "<|eot_id|>x's 12345  \n\n" "naïve 你好 👨‍👩‍👧" "\xff\xfe"; do
  printf '\1%b' "$t" > "$OUT/corpus/seed_$(printf '%s' "$t" | md5sum | cut -c1-8)"
done
exec "$OUT/fuzz_tokenizer" "$OUT/corpus" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=4096 \
  -print_final_stats=1 "$@"
