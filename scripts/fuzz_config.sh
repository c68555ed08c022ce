#!/usr/bin/env bash
# Fuzzes the YAML config loader and --set overrides (fuzz/fuzz_config.cpp).
#   usage: scripts/fuzz_config.sh [SECONDS] [extra libFuzzer flags...]   (-runs=N stops earlier)
source "$(dirname "$0")/fuzz_common.sh"
SECONDS_TO_RUN=${1:-300}
shift || true
fuzz_build fuzz_config fuzz/fuzz_config.cpp src/config/*.cpp -- -lyaml-cpp
# Seeds: every shipped config (mode byte 0) and a few override lists (mode byte 1).
mkdir -p "$OUT/seeds_fuzz_config"
for f in configs/*.yaml; do
  printf '\0' | cat - "$f" > "$OUT/seeds_fuzz_config/$(basename "$f" .yaml)"
done
printf '\0optim:\n  lr: 3e-3\n  lr: 1.0\n---\ntrain: {epochs: 2}\n' > "$OUT/seeds_fuzz_config/dup_and_docs"
printf '\1optim.lr=2e-5\ntrain.max_steps=1e3\nrun.name=a: b\ndata.packing=yes' > "$OUT/seeds_fuzz_config/sets"
fuzz_run fuzz_config "$SECONDS_TO_RUN" -max_len=4096 "$@"
