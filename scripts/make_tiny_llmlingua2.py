#!/usr/bin/env python3
"""Builds a tiny random LLMLingua-2-shaped classifier for tests: a sentencepiece unigram model trained
locally on the demo chat text, the XLM-R tokenizer built from it by transformers, and a random
XLMRobertaForTokenClassification (num_labels=2) with the XLM-R id layout (<s>=0, <pad>=1, </s>=2,
<unk>=3, sentencepiece id + 1 otherwise, <mask> last).

Writes OUT/ as a Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer files,
sentencepiece.bpe.model). llmlingua 0.2.2 only splits XLM-R pieces into words when the model name
contains "xlm-roberta-large", so callers should put that string in OUT's name.
Seeded: the same command gives the same files. Usage: make_tiny_llmlingua2.py OUT [--vocab N]
[--hidden H --layers L --heads A --intermediate I]  (defaults: tiny; XLM-R base is 768/12/12/3072)
"""
import argparse
import json
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo" / "demo_sft.jsonl"


def demo_texts(path: Path):
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--vocab", type=int, default=300, help="sentencepiece pieces")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DEMO)
    args = ap.parse_args()

    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification, XLMRobertaTokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "sp")
        # XLM-R's sentencepiece layout: <unk>=0, <s>=1, </s>=2 and no pad piece.
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(demo_texts(args.data)), model_prefix=prefix, vocab_size=args.vocab,
            model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
            seed_sentencepiece_size=100000, num_threads=1, minloglevel=2)
        shutil.copy(prefix + ".model", args.out / "sentencepiece.bpe.model")
    # transformers converts the sentencepiece model into its own tokenizer (needs protobuf).
    tok = XLMRobertaTokenizer.from_pretrained(str(args.out))
    tok.save_pretrained(str(args.out))

    torch.manual_seed(args.seed)
    cfg = XLMRobertaConfig(vocab_size=args.vocab + 2, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=args.heads, intermediate_size=args.intermediate,
                           max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, num_labels=2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    cfg.architectures = ["XLMRobertaForTokenClassification"]
    model = XLMRobertaForTokenClassification(cfg).float().eval()
    # Random init gives near-uniform keep probabilities; a wider classifier head spreads them so
    # that rankings (and any mismatch) are visible in the tests.
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
    model.save_pretrained(str(args.out))
    print(f"wrote {args.out} (vocab {cfg.vocab_size}, hidden {args.hidden}, layers {args.layers})")


if __name__ == "__main__":
    main()
