#!/usr/bin/env bash
# Fuzzes the safetensors header parser (fuzz/fuzz_safetensors.cpp).
#   usage: scripts/fuzz_safetensors.sh [SECONDS] [extra libFuzzer flags...]   (-runs=N stops earlier)
source "$(dirname "$0")/fuzz_common.sh"
SECONDS_TO_RUN=${1:-300}
shift || true
fuzz_build fuzz_safetensors fuzz/fuzz_safetensors.cpp src/io/safetensors.cpp
# Seeds: small valid files (8-byte little-endian header length, JSON header, data).
mkdir -p "$OUT/seeds_fuzz_safetensors"
python3 - "$OUT/seeds_fuzz_safetensors" <<'PY'
import json, struct, sys
out = sys.argv[1]
def st(tensors, meta=None):
    header, data = {}, b""
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + nbytes]}
        data += bytes(range(nbytes % 256)) + bytes(max(0, nbytes - nbytes % 256))
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data
seeds = {
    "one_f32": st({"w": ("F32", [2, 3], 24)}),
    "two_mixed": st({"a": ("BF16", [4], 8), "b": ("I64", [1, 2], 16)}, {"format": "pt"}),
    "scalar": st({"s": ("F16", [], 2)}),
    "empty_tensor": st({"e": ("F32", [0, 5], 0), "u8": ("U8", [3], 3)}),
}
for name, blob in seeds.items():
    open(f"{out}/{name}", "wb").write(blob)
PY
fuzz_run fuzz_safetensors "$SECONDS_TO_RUN" -max_len=4096 "$@"
