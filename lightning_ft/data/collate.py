"""Batching: right-padding to the longest example of the batch.

Hand-written rather than transformers' collators: those need one class for token labels (Seq2Seq) and
another for class ids (WithPadding), and neither knows the packed layout the data layer adds next.
"""

from __future__ import annotations

import torch

from lightning_ft.constants import IGNORE_INDEX


def pad_collate(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack examples; token labels are padded with IGNORE_INDEX, class labels stay one id per example."""
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        attention_mask[row, : len(e["input_ids"])] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if isinstance(examples[0]["labels"], list):
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, e in enumerate(examples):
            labels[row, : len(e["labels"])] = torch.tensor(e["labels"])
        batch["labels"] = labels
    else:
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    return batch
