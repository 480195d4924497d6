"""Full fine-tuning: every weight trains and every weight is saved."""

from dataclasses import dataclass

from torch import nn

from lightning_ft.methods.base import Method


@dataclass
class Full(Method):
    """Train all weights (use a 10-100x lower learning rate than for adapters: 1e-6 to 1e-5)."""

    saves_full_model = True
    can_merge = True

    def apply(self, model: nn.Module, task: str) -> nn.Module:
        return model.requires_grad_(True)

    def merge(self, model: nn.Module) -> nn.Module:
        return model
