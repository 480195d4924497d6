"""A fit that reaches `max_steps` before its first validation validates once on its last step."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer


class ValidateAtMaxSteps(Callback):
    """Recipes validate once an epoch (`val_check_interval: 1.0`), so a run shorter than an epoch
    (`--trainer.max_steps 20`) would end with no val_loss, no generation metrics and no best checkpoint. On the
    step that reaches max_steps, if this fit has not validated yet, this asks Lightning to stop there: Lightning
    validates before a requested stop (as for early stopping), and the checkpoint callback then sees val_loss."""

    def __init__(self) -> None:
        self.validated = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        reached = 0 < trainer.max_steps <= trainer.global_step
        if reached and not self.validated and not trainer.fit_loop._should_accumulate():
            trainer.should_stop = True
