"""Preemption: on SIGUSR1 (SLURM's warning before the time limit or a preemption), checkpoint at the next optimizer
step, requeue the SLURM job, and stop."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_ft.callbacks.checkpoint import refresh_last


class Preempted(Exception):
    """Training stopped on the preemption signal after saving `checkpoint`; `requeued` names the SLURM job if any."""

    def __init__(self, step: int, checkpoint: str, requeued: str | None) -> None:
        then = f"requeued SLURM job {requeued}" if requeued else "resume with --ckpt_path last"
        super().__init__(f"preempted at step {step}: saved {checkpoint}; {then}")
        self.step, self.checkpoint, self.requeued = step, checkpoint, requeued


class Preemption(Callback):
    """Replaces Lightning's SLURM auto-requeue handler, which saves from inside the signal handler: that is in the
    middle of a step (a checkpoint between backward and optimizer step, or between two parameters' updates) and,
    under DDP, on each process at a different point. Here the handler only raises a flag; after each optimizer
    step the processes agree (any of them signalled) and all save the same step, in `checkpoints/last.ckpt`, where
    `--ckpt_path last` (and a requeued SLURM job) resumes from.
    """

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        self.signum = signal.Signals[signal_name]
        self.requested = False
        self._previous_handler = None
        self._seen_step = -1

    def _request(self, signum, frame) -> None:
        self.requested = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Before Lightning registers its handlers (it then leaves SIGUSR1 to this one) and before data loading
        # starts: a signal that arrives while the data is prepared must not kill the job, and DataLoader workers
        # forked later inherit the handler (SLURM signals every process of the step).
        self.requested = False
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(self.signum, self._request)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._seen_step = trainer.global_step
        rank_zero_info(
            f"training from step {trainer.global_step}; {self.signum.name} checkpoints at the next optimizer step "
            "and stops"
        )

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_handler()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handler()  # Lightning skips the teardown hooks after an exception

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._seen_step:
            return  # inside gradient accumulation: no consistent state to save
        self._seen_step = trainer.global_step
        # Every process takes part, every step: a signal may reach the processes at different steps.
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = save_now(trainer)
        requeued = requeue_slurm_job() if trainer.is_global_zero else None
        raise Preempted(trainer.global_step, path, requeued)


def save_now(trainer: Trainer) -> str:
    """Save the current state where a resume looks first: the checkpoint callback's last.ckpt (through the callback,
    which records it, so the resumed run keeps writing last.ckpt rather than last-v1.ckpt)."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath and callback.save_last:
        refresh_last(callback, trainer)
        return callback.last_model_path
    path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)  # Lightning's name on SLURM
    trainer.save_checkpoint(path)
    return path


def requeue_slurm_job() -> str | None:
    """`scontrol requeue` this SLURM job (array task included); None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return None
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, text=True)
    except FileNotFoundError:
        result = subprocess.CompletedProcess([], 1, "", "scontrol not found on PATH")
    if result.returncode != 0:
        rank_zero_warn(f"could not requeue SLURM job {job}: {result.stderr.strip()}")
        return None
    return job
