"""ModelCheckpoint whose `last.ckpt` is always the newest state."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, but `last.ckpt` is rewritten at every save point, not only with a new best.

    Lightning 2.6 writes last.ckpt only in a step where a top-k checkpoint was also written: once the monitored
    metric stops improving, last.ckpt goes stale and `--ckpt_path last` would resume from an older state
    (silently repeating epochs). The private helpers used here are the ones the parent's own hooks call.
    """

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: Trainer) -> None:
        # Skipped when the parent already saved in this step (then last.ckpt is fresh) or must not save at all.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
