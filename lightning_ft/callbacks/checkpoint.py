"""ModelCheckpoint whose `last.ckpt` is always the newest state, and where a run resumes from."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, but `last.ckpt` is rewritten at every save point, not only with a new best.

    Lightning 2.6 writes last.ckpt only in a step where a top-k checkpoint was also written: once the monitored
    metric stops improving, last.ckpt goes stale and a resume would start from an older state (silently repeating
    epochs); and with `every_n_train_steps`, it defers every save until the monitored metric exists (the first
    validation), so a run killed before that loses everything. The private helpers used here are the ones the
    parent's own hooks call.
    """

    _step_refreshed = -1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step, every = trainer.global_step, self._every_n_train_steps
        if every < 1 or step == 0 or step % every or step == self._step_refreshed:
            return
        self._step_refreshed = step
        saved = self._last_global_step_saved
        self._refresh_last(trainer)
        if self._defer_save_until_validation:  # still to come at validation end: the top-k save of this step
            self._last_global_step_saved = saved

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: Trainer) -> None:
        refresh_last(self, trainer)


def refresh_last(callback: ModelCheckpoint, trainer: Trainer) -> None:
    """Write the callback's last.ckpt for the current step, through the callback (which records it). Skipped when
    it already saved in this step (then last.ckpt is fresh) or must not save at all."""
    if callback.save_last and not callback._should_skip_saving_checkpoint(trainer):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
