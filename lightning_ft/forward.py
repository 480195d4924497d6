"""A model's forward passes as the training objectives use them: its logits, its cross-entropy on the label tokens,
its logits at the label positions.

The module hands an objective the policy's (the model being trained); a teacher is another. Objectives so need not
know the adaptation method nor the model's anatomy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from lightning_ft.anatomy import backbone
from lightning_ft.constants import IGNORE_INDEX, Task
from lightning_ft.errors import UserError
from lightning_ft.loss import head_cross_entropy, plain_cross_entropy, plain_output_head


@dataclass
class Forward:
    """One model's forward passes over a batch (input_ids, labels and attention_mask or, packed, position_ids).

    Attributes:
        model: the Hugging Face model (with its method's wrapper, if any).
        task: what its labels are: next tokens (causal_lm) or one class per example.
        name: what error messages call it (the method that trains it).
        hidden_states: whether the loss may come from the backbone's hidden states (loss.py); False when a wrapper
            changes the model's forward itself (prefix tuning feeds past key values).
        packing: whether packed rows, told apart only by position ids, keep their examples apart in this model.
        context: a context every pass runs in (a reference: the policy with its adapters off, and no gradients).
    """

    model: nn.Module
    task: Task
    name: str = "the model"
    hidden_states: bool = True
    packing: bool = True
    context: Callable[[], AbstractContextManager] = contextlib.nullcontext

    def follow(self, batch: dict) -> None:
        """Move the model to the batch's device (a frozen model the module does not hold moves with its batches)."""
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)

    def inputs(self, batch: dict) -> dict:
        position_ids, attention_mask = batch.get("position_ids"), batch.get("attention_mask")
        if position_ids is not None and attention_mask is None and not self.packing:
            raise UserError(f"{self.name} cannot train on packed rows; use another --data.batching")
        # Packed rows come with position_ids and no attention mask; transformers then keeps examples apart, but
        # only with no cache in play (see DESIGN.md): hence use_cache=False.
        inputs = {"input_ids": batch["input_ids"], "attention_mask": attention_mask, "position_ids": position_ids}
        return {**inputs, "use_cache": False}

    def logits(self, batch: dict) -> torch.Tensor:
        with self.context():
            return self.model(**self.inputs(batch)).logits

    def hidden(self, batch: dict) -> torch.Tensor:
        """The backbone's last hidden states (batch x tokens x hidden), before the output head."""
        with self.context():
            return backbone(self.model)(**self.inputs(batch)).last_hidden_state

    def cross_entropy(self, batch: dict) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over the label tokens (causal LM) or examples (classification), and their count.

        A causal LM whose head is plain (loss.py) is scored from the backbone's hidden states at the label positions
        only, in chunks; the others from the model's own logits.
        """
        labels = batch["labels"]
        if self.task == "sequence_classification":
            return plain_cross_entropy(self.logits(batch), labels)
        head = self.hidden_states and plain_output_head(self.model)
        if not head:  # prefix tuning prepends no logits: shift so position t predicts token t + 1
            return plain_cross_entropy(self.logits(batch)[:, :-1], labels[:, 1:])
        return head_cross_entropy(self.hidden(batch)[:, :-1], head, labels[:, 1:])

    def label_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A causal LM's next-token logits at its label positions (label tokens x vocab) with those labels, or a
        classifier's logits (batch x classes) with its labels.

        From the hidden states where allowed, only the label positions are projected onto the vocabulary: with
        response-only labels, a fraction of the model's full (tokens x vocab) logits. Not chunked like the
        cross-entropy: objectives that compare whole distributions need them at once.
        """
        if self.task == "sequence_classification":
            return self.logits(batch), batch["labels"]
        labels = batch["labels"][:, 1:]  # position t predicts token t + 1
        mask = labels != IGNORE_INDEX
        head = self.hidden_states and plain_output_head(self.model)
        if head:  # a plain Linear (no adapter of its own): only the backbone runs in the context
            return head(self.hidden(batch)[:, :-1][mask]), labels[mask]
        return self.logits(batch)[:, :-1][mask], labels[mask]

    def label_logps(self, batch: dict) -> torch.Tensor:
        """The log-probability of each label token, in fp32 (batch x tokens - 1, aligned with labels[:, 1:]), 0
        where there is no label."""
        logits, targets = self.label_logits(batch)
        logps = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        return torch.zeros(mask.shape, dtype=logps.dtype, device=logps.device).masked_scatter(mask, logps)
