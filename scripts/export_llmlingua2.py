#!/usr/bin/env python3
"""Exports an LLMLingua-2 token classifier (Hugging Face XLMRobertaForTokenClassification, e.g.
microsoft/llmlingua-2-xlm-roberta-large-meetingbank) for sftgo's `llmlingua2` grouping function.

Writes OUT/:
  model.pt                 TorchScript (torch.jit.trace, fp32, CPU): forward(input_ids [B,T] int64,
                           attention_mask [B,T] int64) -> logits [B,T,2] float32. Logits, not
                           probabilities, so that C++ applies the same softmax as llmlingua
                           (softmax(logits, -1)[..., label_index]).
  sentencepiece.bpe.model  the tokenizer's sentencepiece model (XLM-R ids: <s>=0, <pad>=1, </s>=2,
                           <unk>=3, sentencepiece id + 1 otherwise).
  llmlingua2.json          what C++ checks and needs: format, model name, window (512 as in llmlingua),
                           label_index (1 = keep), special ids, vocab size, sha256 and piece count of
                           the sentencepiece model.
The trace is validated before writing: on a padded batch of a different shape than the trace input,
the TorchScript logits must equal the eager model's within 1e-5 (same kernels; the bound only allows
for different blocking at another shape).
Usage: export_llmlingua2.py SRC OUT   (SRC: a checkpoint directory, or a hub name when online)
"""
import argparse
import hashlib
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
    ap.add_argument("src")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()

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

    args.out.mkdir(parents=True, exist_ok=True)
    traced.save(str(args.out / "model.pt"))
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
    print(f"wrote {args.out} (window {window}, vocab {vocab}, trace check max |diff| {diff:.3g})")


if __name__ == "__main__":
    main()
