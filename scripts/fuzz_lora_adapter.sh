#!/usr/bin/env bash
# Fuzzes the LoRA adapter loader's checks (fuzz/fuzz_lora_adapter.cpp): adapter_config.json + the
# adapter safetensors header against it.
#   usage: scripts/fuzz_lora_adapter.sh [SECONDS] [extra libFuzzer flags...]   (-runs=N stops earlier)
source "$(dirname "$0")/fuzz_common.sh"
SECONDS_TO_RUN=${1:-300}
shift || true
fuzz_build fuzz_lora_adapter fuzz/fuzz_lora_adapter.cpp src/model/lora_config.cpp src/io/safetensors.cpp
# Seeds: 2-byte config length, adapter_config.json, a small adapter safetensors (PEFT names).
mkdir -p "$OUT/seeds_fuzz_lora_adapter"
python3 - "$OUT/seeds_fuzz_lora_adapter" <<'PY'
import json, struct, sys
out = sys.argv[1]
def st(tensors):
    header, data = {}, b""
    for name, shape in tensors.items():
        nbytes = 4
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + nbytes]}
        data += bytes(nbytes)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data
def seed(cfg, tensors):
    c = json.dumps(cfg).encode()
    return struct.pack("<H", len(c)) + c + st(tensors)
p = "base_model.model.model.layers.0.self_attn."
base = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "use_rslora": False}
seeds = {
    "ok": seed(base, {p + "q_proj.lora_A.weight": [2, 8], p + "q_proj.lora_B.weight": [8, 2],
                      p + "v_proj.lora_A.weight": [2, 8], p + "v_proj.lora_B.weight": [4, 2]}),
    "huge_r": seed(dict(base, r=2147483647), {p + "q_proj.lora_A.weight": [2, 8]}),
    "all_linear_rslora": seed(dict(base, target_modules="all-linear", use_rslora=True, lora_alpha=1e308),
                              {p + "q_proj.lora_A.weight": [2, 4], p + "q_proj.lora_B.weight": [4, 2]}),
    "patterns": seed(dict(base, rank_pattern={}, alpha_pattern={}, modules_to_save=None),
                     {"base_model.model.lm_head.lora_A.weight": [2, 3]}),
}
for name, blob in seeds.items():
    open(f"{out}/{name}", "wb").write(blob)
PY
fuzz_run fuzz_lora_adapter "$SECONDS_TO_RUN" -max_len=4096 "$@"
