"""What a user needs to see of an evaluation in the console: every validation metric, and why a fit stopped early."""

from __future__ import annotations

import math

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_only


class ConsoleSummary(Callback):
    """One line after each validation with every `val_*` metric (loss, accuracy / F1, BLEU / ROUGE / exact match:
    the progress bar shows only the loss), and one line when early stopping ends the fit."""

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {
            name: value.item() if hasattr(value, "item") else value
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("val_") and getattr(value, "numel", lambda: 1)() == 1
        }
        if metrics:
            shown = "  ".join(f"{name} {value:.4g}" for name, value in metrics.items() if math.isfinite(value))
            print(f"validation at step {trainer.global_step}: {shown}", flush=True)

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, EarlyStopping) and callback.stopping_reason_message:
                print(f"early stopping at step {trainer.global_step}: {callback.stopping_reason_message}", flush=True)
