"""KeepSparsity: fine-tune a pruned model without undoing the pruning."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn


class KeepSparsity(Callback):
    """Weights of the trained Linear layers that are exactly zero when fit starts (a model from `lightning-ft prune
    --kind unstructured`) stay zero: they are set back to zero right after every optimizer step, whose gradients,
    momentum and weight decay would otherwise make them dense again. A layer that is all zero (LoRA's B, which
    starts at zero) is left to train.

    A hook on the optimizers' step rather than `on_train_batch_end`: it runs only when the weights changed (not on
    every accumulated batch) and before anything else reads them (checkpoints, validation). On resume the zeros are
    read again from the restored weights, which kept them. Not Lightning's ModelPruning: it prunes on a schedule of
    its own at epoch ends rather than keeping given zeros, and its reparametrisation (weight = weight_orig *
    weight_mask, recomputed before each forward) renames the weights in the state dict, so FineTuneModule's checkpoint
    filter (the live state-dict keys) would drop the `weight` its on_save_checkpoint writes back.
    """

    def __init__(self) -> None:
        self.zeros: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._hooks: list = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.zeros = []
        for module in pl_module.modules():
            weight = getattr(module, "weight", None)
            if not (isinstance(module, nn.Linear) and weight.requires_grad):
                continue
            zeros = weight.detach() == 0  # a bool mask: a quarter of an fp32 weight
            if 0 < int(zeros.sum()) < zeros.numel():  # all zero is no pruning but a zero start (LoRA's B): it trains
                self.zeros.append((weight, zeros))
        self._hooks = [optimizer.register_step_post_hook(self._zero_again) for optimizer in trainer.optimizers]
        count = sum(int(mask.sum()) for _, mask in self.zeros)
        rank_zero_info(f"KeepSparsity: {count:,} zero weights in {len(self.zeros)} Linear layers stay zero")

    @torch.no_grad()
    def _zero_again(self, optimizer, args, kwargs) -> None:
        for weight, mask in self.zeros:
            weight.masked_fill_(mask, 0)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self.zeros = [], []
