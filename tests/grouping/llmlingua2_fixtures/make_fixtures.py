#!/usr/bin/env python3
"""Writes the small TorchScript fixtures of tests/grouping/test_llmlingua2.cpp into this directory
(scripted in Python: a module defined and saved from C++ in the test process deadlocks LibTorch 2.11's
first TorchScript run there). Usage: make_fixtures.py [DIR]"""
import sys
from pathlib import Path

import torch


class Good(torch.nn.Module):
    """Keep logit (id % 7) * 0.5 - 1, drop logit 0: probabilities known in closed form."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = torch.remainder(input_ids, 7).float() * 0.5 - 1.0
        return torch.stack([torch.zeros_like(keep), keep], -1)


class WrongSignature(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.float(), x.float()], -1)


class WrongShape(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return input_ids.float()


class ThreeLabels(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.zeros([input_ids.size(0), input_ids.size(1), 3])


class SmallEmbedding(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(input_ids, torch.zeros([10, 2]))


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for name, cls in [("good", Good), ("wrong_signature", WrongSignature), ("wrong_shape", WrongShape),
                      ("three_labels", ThreeLabels), ("small_embedding", SmallEmbedding)]:
        torch.jit.script(cls()).save(str(out / f"{name}.pt"))


if __name__ == "__main__":
    main()
