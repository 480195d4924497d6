"""Prefix tuning (Li & Liang 2021) through peft: trained key/value vectors prepended in every attention layer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lightning_ft.errors import UserError
from lightning_ft.methods.base import Method
from lightning_ft.methods.lora import PEFT_TASK_TYPES


@dataclass
class PrefixTuning(Method):
    """Learn `num_virtual_tokens` key/value pairs per layer; the base model stays frozen.

    Args:
        num_virtual_tokens: prefix length, usually 10-30; more tokens add capacity and attention cost.
        prefix_projection: reparameterise the prefix through a 2-layer MLP (more stable, more parameters).
        encoder_hidden_size: hidden size of that MLP (defaults to the model's hidden size).
    """

    # The prefix enters as a key/value cache, and with a cache transformers no longer derives the block-diagonal
    # mask of packed rows from their position ids.
    supports_packing = False
    hidden_state_loss = False  # peft's wrapper feeds the prefix: calling the backbone alone would leave it out

    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None

    def check(self, *, gradient_checkpointing: bool) -> None:
        if gradient_checkpointing:
            raise UserError(
                "PrefixTuning does not work with --model.gradient_checkpointing true (peft refuses it); turn one off"
            )

    def apply(self, model: nn.Module, task: str) -> nn.Module:
        from peft import PrefixTuningConfig, get_peft_model  # here, not at the top: see methods/base.py

        config = PrefixTuningConfig(
            task_type=PEFT_TASK_TYPES[task],
            num_virtual_tokens=self.num_virtual_tokens,
            prefix_projection=self.prefix_projection,
            encoder_hidden_size=self.encoder_hidden_size or model.config.hidden_size,
        )
        return get_peft_model(model, config)

    def merge(self, model: nn.Module) -> nn.Module:
        raise UserError(
            "PrefixTuning cannot be merged: its prefix is extra attention input, not a change to any base weight"
        )
