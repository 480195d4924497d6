"""Batches of tokenized prompts for `generate` (the GenerationMetrics callback, bench-inference)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence


def left_padded(prompts: Sequence[Sequence[int] | torch.Tensor], pad_id: int, device) -> dict[str, torch.Tensor]:
    """A batch padded on the left, so that every row's last prompt token sits where generation starts."""
    rows = [torch.as_tensor(prompt, dtype=torch.long) for prompt in prompts]
    input_ids = pad_sequence(rows, batch_first=True, padding_value=pad_id, padding_side="left")
    ones = [torch.ones_like(row) for row in rows]
    attention_mask = pad_sequence(ones, batch_first=True, padding_value=0, padding_side="left")
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
