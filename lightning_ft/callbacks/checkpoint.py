"""ModelCheckpoint whose `last.ckpt` is always the newest state, and where a run resumes from."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


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
        refresh_last(self, trainer)


def refresh_last(callback: ModelCheckpoint, trainer: Trainer) -> None:
    """Write the callback's last.ckpt for the current step, through the callback (which records it). Skipped when
    it already saved in this step (then last.ckpt is fresh) or must not save at all."""
    if callback.save_last and not callback._should_skip_saving_checkpoint(trainer):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def checkpoint_step(path: Path) -> int | None:
    """The global step a checkpoint holds, or None when it cannot be read (cut short by a kill, or not one).

    Reads only the pickled metadata (mmap: tensors stay on disk). Sharded checkpoints are folders: FSDP's keep the
    step in `meta.pt`, DeepSpeed's in the rank-0 model states file.
    """
    if path.is_dir():
        candidates = [path / "meta.pt", *sorted(path.glob("*/mp_rank_00_model_states.pt"))]
        path = next((c for c in candidates if c.is_file()), path)
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        return int(checkpoint["global_step"])
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a resume candidate
        return None


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The valid checkpoint with the most training steps in a run dir, the newest file among equals.

    Candidates: `checkpoints/*.ckpt` and Lightning's SLURM `hpc_ckpt_*.ckpt`. Lightning itself resumes from the
    highest-numbered hpc checkpoint even when a later ModelCheckpoint file exists, and `--ckpt_path last` ignores
    hpc checkpoints; neither is right after a requeue, so the step count decides.
    """
    candidates = [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    steps = {path: step for path in candidates if (step := checkpoint_step(path)) is not None}
    for path in sorted(set(candidates) - steps.keys()):
        rank_zero_warn(f"skipping unreadable checkpoint {path}")
    return max(steps, key=lambda path: (steps[path], path.stat().st_mtime), default=None)
