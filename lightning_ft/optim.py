"""Optimizer and learning-rate schedule settings, and building them for the trainable parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lightning_ft.errors import UserError


@dataclass(frozen=True)
class Optim:
    """How the trainable weights are updated.

    Attributes:
        name: "adamw" (torch), or bitsandbytes' "adamw_8bit" / "paged_adamw_8bit" (8-bit states, ~75% less
            optimizer memory; "paged" also pages states to CPU under GPU memory pressure).
        lr: peak learning rate. LoRA/adapters 1e-4 to 5e-4; full fine-tuning 1e-6 to 1e-5.
        weight_decay: decoupled decay on matrices only (biases and norms get none); 0.01 is usual.
        betas, eps: AdamW's moment coefficients and denominator epsilon.
        scheduler: "linear" or "cosine" decay to zero after warmup, or "constant" after warmup.
        warmup_steps: linear warmup length in optimizer steps; or
        warmup_ratio: warmup as a fraction of all optimizer steps (5-10% is usual). Set one of the two.
    """

    name: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps and self.warmup_ratio:
            raise UserError("set either --model.optim.warmup_steps or --model.optim.warmup_ratio, not both")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UserError(f"--model.optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        # torch checks these only when the optimizer is built, after the model and the data are loaded
        for name, value in (("lr", self.lr), ("weight_decay", self.weight_decay), ("eps", self.eps)):
            if not value >= 0.0:  # also NaN
                raise UserError(f"--model.optim.{name} must be >= 0, got {value}")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise UserError(f"--model.optim.betas must each be in [0, 1), got {list(self.betas)}")
        if self.warmup_steps < 0:
            raise UserError(f"--model.optim.warmup_steps must be >= 0, got {self.warmup_steps}")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable weights split into decayed matrices and undecayed biases / norm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_norm_or_bias = p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()
        (no_decay if is_norm_or_bias else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, optim: Optim) -> torch.optim.Optimizer:
    groups = [g for g in parameter_groups(model, optim.weight_decay) if g["params"]]
    kwargs = {"lr": optim.lr, "betas": optim.betas, "eps": optim.eps}
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    try:
        import bitsandbytes as bnb

        cls = bnb.optim.AdamW8bit if optim.name == "adamw_8bit" else bnb.optim.PagedAdamW8bit
        return cls(groups, **kwargs)
    except Exception as err:  # missing package or no kernels for this platform
        raise UserError(f"--model.optim.name {optim.name} needs bitsandbytes with 8-bit optimizers: {err}") from err


def build_scheduler(optimizer: torch.optim.Optimizer, optim: Optim, total_steps: int):
    warmup = optim.warmup_steps or int(optim.warmup_ratio * total_steps)
    name = "constant_with_warmup" if optim.scheduler == "constant" else optim.scheduler
    from transformers import get_scheduler  # here: its module imports peft and bitsandbytes (1.6 s of --help)

    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
