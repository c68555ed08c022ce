"""Interop of our safetensors reader/writer with the reference `safetensors` Python package."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

safetensors_np = pytest.importorskip("safetensors.numpy")
torch = pytest.importorskip("torch")
from safetensors.torch import save_file, load_file  # noqa: E402

BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD / "bin" / "st_tool"
pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"{TOOL} not built")


def dump(path):
    out = subprocess.run([str(TOOL), "dump", str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_reference_files_load_in_ours(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(4, 2, generator=g).to(torch.bfloat16),
        "f16": torch.randn(7, generator=g).to(torch.float16),
        "i64": torch.tensor([1, -2, 1 << 40]),
        "i32": torch.tensor([3, 4], dtype=torch.int32),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "ref.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "héllo"})
    got = dump(path)
    assert got["metadata"] == {"format": "pt", "note": "héllo"}
    assert set(got["tensors"]) == set(tensors)
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64",
             torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}
    for name, t in tensors.items():
        g_t = got["tensors"][name]
        assert g_t["dtype"] == names[t.dtype]
        assert g_t["shape"] == list(t.shape)
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        assert bytes.fromhex(g_t["hex"]) == raw, name


@pytest.mark.parametrize("max_shard", [1 << 20, 40])
def test_our_files_load_in_reference(tmp_path, max_shard):
    out = tmp_path / "ckpt"
    subprocess.run([str(TOOL), "write", str(out), str(max_shard)], check=True)
    files = sorted(out.glob("*.safetensors"))
    if max_shard == 40:
        assert len(files) > 1
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {f.name for f in files}
    else:
        assert [f.name for f in files] == ["model.safetensors"]
    loaded = {}
    for f in files:
        loaded.update(load_file(str(f)))
    assert loaded["model.f32"].tolist() == [[0.5, -1.25, 3.0], [np.float32(1e-7).item(), -0.0, 65504.0]]
    assert loaded["model.bf16"].dtype == torch.bfloat16
    assert loaded["model.bf16"][:2].tolist() == [1.0, -2.0] and loaded["model.bf16"][2].item() == float("inf")
    assert loaded["model.f16"].tolist() == [[1.0], [-2.0], [65504.0]]
    assert loaded["model.i64"].tolist() == [1, -2, 1 << 40]
    assert loaded["model.i32"].tolist() == [7, -7]
    assert loaded["model.u8"].tolist() == [0, 255, 3]
    assert loaded["model.bool"].tolist() == [True, False]
    assert loaded["model.scalar"].shape == () and loaded["model.scalar"].item() == 0.5
    assert loaded["model.empty"].shape == (0, 3)
    # And our reader agrees with itself on the directory (index resolution).
    assert set(dump(out)["tensors"]) == set(loaded)
