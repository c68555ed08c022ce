#!/usr/bin/env python3
"""Exports an LLMLingua-2 token classifier (Hugging Face XLMRobertaForTokenClassification, e.g.
microsoft/llmlingua-2-xlm-roberta-large-meetingbank) for sftgo's `llmlingua2` grouping function.

Writes OUT/:
  model.pt                 TorchScript (torch.jit.trace, fp32): forward(input_ids [B,T] int64,
                           attention_mask [B,T] int64) -> logits [B,T,2] float32. Logits, not
                           probabilities, so that C++ applies the same softmax as llmlingua
                           (softmax(logits, -1)[..., label_index]). Device-neutral: a trace records
                           the tracing device (CPU) as Device constants (aten::to(mask, cpu),
                           arange/zeros(..., cpu) in transformers' mask code), which loading with
                           map_location=cuda does not move; every such constant is replaced by
                           prim::device(input_ids), so the module runs on whatever device its
                           inputs and parameters are on.
  sentencepiece.bpe.model  the tokenizer's sentencepiece model (XLM-R ids: <s>=0, <pad>=1, </s>=2,
                           <unk>=3, sentencepiece id + 1 otherwise).
  llmlingua2.json          what C++ checks and needs: format, model name, window (512 as in llmlingua),
                           label_index (1 = keep), special ids, vocab size, sha256 and piece count of
                           the sentencepiece model.
The trace is validated before writing: on a padded batch of a different shape than the trace input,
the TorchScript logits must equal the eager model's within 1e-5 (same kernels; the bound only allows
for different blocking at another shape); the saved file must hold no Device constant and must run
with its parameters and inputs on the meta device (output on meta).
Usage: export_llmlingua2.py SRC OUT            (SRC: a checkpoint directory, or a hub name when online)
       export_llmlingua2.py --model SRC --out OUT
"""
import argparse
import hashlib
import io
import json
import shutil
from pathlib import Path

import torch

FORMAT = "sftgo-llmlingua2/1"
WINDOW = 512  # llmlingua's PromptCompressor.max_seq_len: <s> + up to 511 pieces (+ </s> when it fits)


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()


def device_constants(graph):
    """Every prim::Constant of Device type in `graph` and its nested blocks (as printed IR lines)."""
    found = []
    for node in graph.findAllNodes("prim::Constant"):  # recurses into blocks
        if node.output().type().kind() == "DeviceObjType":
            found.append(str(node).strip())
    return found


def make_device_neutral(traced):
    """Inlines the traced forward graph (so that every node sees the inputs) and replaces each Device
    constant by prim::device(input_ids). Returns how many constants were replaced."""
    graph = traced.graph
    torch._C._jit_pass_inline(graph)
    ids = list(graph.inputs())[1]  # (self, input_ids, attention_mask)
    first = next(iter(graph.nodes()))
    replaced = 0
    for node in list(graph.findAllNodes("prim::Constant")):
        if node.output().type().kind() != "DeviceObjType":
            continue
        dev = graph.create("prim::device", [ids])
        dev.output().setType(torch._C.DeviceObjType.get())
        dev.insertBefore(first)
        node.output().replaceAllUsesWith(dev.output())
        node.destroy()
        replaced += 1
    return replaced


def module_to_meta(module):
    """Moves a loaded ScriptModule's parameters and buffers to the meta device in place (ScriptModule.to
    refuses traced parameters), so that a run shows whether anything else pins a device."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        *path, leaf = name.split(".")
        sub = module
        for p in path:
            sub = getattr(sub, p)
        sub._c.setattr(leaf, t.detach().to("meta"))
    return module


def check_device_neutral(data: bytes):
    """Raises SystemExit when the serialized module has a Device constant or cannot run on meta."""
    module = torch.jit.load(io.BytesIO(data))
    consts = device_constants(module.inlined_graph)
    if consts:
        raise SystemExit("error: the exported graph still pins a device: " + "; ".join(consts[:3]))
    module = module_to_meta(module)
    ids = torch.zeros(2, 7, dtype=torch.long, device="meta")
    out = module(ids, torch.ones_like(ids))
    if out.device.type != "meta" or tuple(out.shape) != (2, 7, 2):
        raise SystemExit(f"error: on meta inputs the module returned {tuple(out.shape)} on {out.device}")


def find_sp_model(src: str) -> Path:
    p = Path(src)
    if p.is_dir():
        cand = p / "sentencepiece.bpe.model"
        if cand.is_file():
            return cand
        raise SystemExit(f"error: {src} has no sentencepiece.bpe.model (the XLM-R sentencepiece model)")
    from huggingface_hub import hf_hub_download  # hub names only
    return Path(hf_hub_download(src, "sentencepiece.bpe.model"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Positional SRC OUT, or --model SRC --out OUT (docs/reproduce.md spells it that way).
    ap.add_argument("src", nargs="?")
    ap.add_argument("out", nargs="?", type=Path)
    ap.add_argument("--model", dest="model_opt", metavar="SRC", help="same as the positional SRC")
    ap.add_argument("--out", dest="out_opt", type=Path, metavar="OUT", help="same as the positional OUT")
    args = ap.parse_args()
    if args.model_opt is not None and args.src is not None and args.out is None and args.out_opt is None:
        args.out, args.src = Path(args.src), None  # --model SRC OUT
    for pos, opt, name in (("src", "model_opt", "SRC"), ("out", "out_opt", "OUT")):
        a, b = getattr(args, pos), getattr(args, opt)
        if a is not None and b is not None:
            ap.error(f"{name} given twice (positional and --{'model' if name == 'SRC' else 'out'})")
        if a is None and b is None:
            ap.error(f"missing {name}: usage export_llmlingua2.py SRC OUT or --model SRC --out OUT")
        setattr(args, pos, a if a is not None else b)

    import sentencepiece as spm
    from transformers import AutoConfig, AutoModelForTokenClassification

    cfg = AutoConfig.from_pretrained(args.src)
    if not any("ForTokenClassification" in a for a in (cfg.architectures or [])):
        raise SystemExit(f"error: {args.src} is not a token classifier (architectures {cfg.architectures})")
    if cfg.num_labels != 2:
        raise SystemExit(f"error: {args.src} has {cfg.num_labels} labels; LLMLingua-2 needs 2 (0 drop, 1 keep)")
    model = AutoModelForTokenClassification.from_pretrained(args.src, attn_implementation="eager",
                                                            dtype=torch.float32).eval()
    sp_path = find_sp_model(args.src)
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    n_pieces = sp.get_piece_size()
    if (sp.unk_id(), sp.bos_id(), sp.eos_id()) != (0, 1, 2):
        raise SystemExit(f"error: {sp_path} does not have the XLM-R layout <unk>=0 <s>=1 </s>=2")
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab < n_pieces + 1:
        raise SystemExit(f"error: embedding has {vocab} rows but the sentencepiece model needs {n_pieces + 1}")
    window = min(WINDOW, cfg.max_position_embeddings - cfg.pad_token_id - 1)

    wrapped = Logits(model).eval()
    gen = torch.Generator().manual_seed(0)
    ex_ids = torch.randint(4, n_pieces + 1, (2, 12), generator=gen)
    ex_ids[:, 0] = 0
    ex_mask = torch.ones_like(ex_ids)
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, (ex_ids, ex_mask), check_trace=False)
        n_devices = make_device_neutral(traced)
        # Validate at another shape, with padding, against the eager model.
        ids = torch.randint(4, n_pieces + 1, (3, 37), generator=gen)
        ids[:, 0] = 0
        mask = torch.ones_like(ids)
        for row, length in ((1, 20), (2, 5)):
            ids[row, length - 1] = 2
            ids[row, length:] = 1
            mask[row, length:] = 0
        want = wrapped(ids, mask)
        got = traced(ids, mask)
    if got.shape != (3, 37, 2):
        raise SystemExit(f"error: traced output has shape {tuple(got.shape)}, expected (3, 37, 2)")
    diff = (got - want)[mask.bool()].abs().max().item()
    if diff > 1e-5:
        raise SystemExit(f"error: TorchScript and eager logits differ by {diff:.3g} (> 1e-5): the trace is not shape-generic")

    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    check_device_neutral(buf.getvalue())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.pt").write_bytes(buf.getvalue())
    shutil.copy(sp_path, args.out / "sentencepiece.bpe.model")
    meta = {
        "format": FORMAT,
        "model_name": str(args.src).rstrip("/").split("/")[-1] if Path(args.src).is_dir() else args.src,
        "output": "logits",
        "label_index": 1,
        "window": window,
        "bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3, "piece_offset": 1,
        "vocab_size": vocab,
        "sentencepiece_pieces": n_pieces,
        "sentencepiece_sha256": hashlib.sha256(sp_path.read_bytes()).hexdigest(),
        "validated_max_abs_diff": diff,
    }
    (args.out / "llmlingua2.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.out} (window {window}, vocab {vocab}, trace check max |diff| {diff:.3g}, "
          f"{n_devices} device constant(s) replaced by the inputs' device)")


if __name__ == "__main__":
    main()
