"""Stopping on a signal: SIGUSR1 (SLURM's warning before the time limit or a preemption), SIGTERM (a scheduler, a
node going down) or SIGINT (Ctrl-C) checkpoints at the next optimizer step and stops; a second signal stops at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_ft.callbacks.checkpoint import refresh_last

SIGNALS = ("SIGUSR1", "SIGTERM", "SIGINT")
PRIORITY = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # processes signalled differently agree on the last


class Preempted(Exception):
    """Training stopped on a signal after saving `checkpoint`; `requeued` names the SLURM job if any."""

    def __init__(self, step: int, checkpoint: str, requeued: str | None, signal_name: str = "SIGUSR1") -> None:
        then = f"requeued SLURM job {requeued}" if requeued else "rerun the same command to resume"
        super().__init__(f"stopped on {signal_name} at step {step}: saved {checkpoint}; {then}")
        self.step, self.checkpoint, self.requeued = step, checkpoint, requeued


class Preemption(Callback):
    """Replaces Lightning's handlers. Lightning's SLURM handler saves from inside the signal handler: in the middle
    of a step (between backward and optimizer step, or between two parameters' updates) and, under DDP, on each
    process at a different point; on SIGTERM it stops after the current batch without any checkpoint (inside
    gradient accumulation, too) and exits 0. Here a handler only raises a flag; after each optimizer step the
    processes agree (any of them signalled) and all save the same step, in `checkpoints/last.ckpt`, where a rerun
    (and a requeued SLURM job) resumes from. A second signal before the save starts means "now": the process exits at
    once, 128 + signal number, without a checkpoint (the previous one stays). Once the save has started, further
    signals wait for it (SLURM sends SIGTERM as soon as a job is requeued).

    Args:
        signals: the signals that stop training this way. SIGUSR1 also requeues the SLURM job (SLURM itself
            sends SIGTERM when it cancels a job or requeues a preempted one).
    """

    def __init__(self, signals: tuple[str, ...] = SIGNALS) -> None:
        self.signums = [signal.Signals[name] for name in signals]
        self.requested: signal.Signals | None = None
        self.active = False
        self.stopping = False  # saving, requeueing: what the first signal asked for; later ones wait for it
        self._previous_handlers: dict[signal.Signals, object] = {}
        self._seen_step = -1

    def _on_signal(self, signum, frame) -> None:
        signum = signal.Signals(signum)
        if not self.active:  # training is over and this handler outlived it: behave as Python's own would
            default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, self._previous_handlers.get(signum, default))
            signal.raise_signal(signum)
        elif self.requested is None:
            self.requested = signum
        elif not self.stopping:
            print(f"second {signum.name}: exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (e.g. a notebook's worker thread): Lightning's stay
        for signum in self.signums:
            previous = signal.signal(signum, self._on_signal)
            if previous != self._on_signal:
                self._previous_handlers.setdefault(signum, previous)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Before data loading starts: a signal that arrives while the data is prepared must not kill the job, and
        # DataLoader workers forked later inherit the handler (SLURM signals every process of the step).
        if stage == "fit":
            self.requested, self.active, self.stopping = None, True, False
            self._install()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install()  # again: Lightning has registered its own SIGTERM handler since setup
        self._seen_step = trainer.global_step
        names = "/".join(signum.name for signum in self.signums)
        rank_zero_info(
            f"training from step {trainer.global_step}; {names} checkpoints at the next optimizer step and stops"
        )

    def _restore_handlers(self, trainer: Trainer | None = None) -> None:
        self.active = False
        # Lightning noted this callback's handlers as the ones to put back when it tears down (it registers its own
        # after `setup`); it must put back those from before the fit instead, or they outlive it.
        noted = getattr(getattr(trainer, "_signal_connector", None), "_original_handlers", {})
        for signum, previous in self._previous_handlers.items():
            if noted.get(signum) == self._on_signal:
                noted[signum] = previous
            if threading.current_thread() is threading.main_thread():
                signal.signal(signum, previous)
        self._previous_handlers = {}

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_handlers(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handlers(trainer)  # Lightning skips the teardown hooks after an exception

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._seen_step:
            return  # inside gradient accumulation: no consistent state to save
        self._seen_step = trainer.global_step
        # Every process takes part, every step: a signal may reach the processes at different steps, or one process
        # alone (one node's, from its slurmd). All learn the signal: SIGUSR1 anywhere means requeue the job.
        mine = PRIORITY.index(self.requested) if self.requested in PRIORITY else -1
        agreed = int(trainer.strategy.reduce(torch.tensor(mine, device=pl_module.device), reduce_op="max"))
        if agreed < 0:
            return
        signum = PRIORITY[agreed]
        self.stopping = True  # e.g. SLURM's SIGTERM right after the requeue must not cut the run short now
        path = save_now(trainer)
        requeued = requeue_slurm_job() if trainer.is_global_zero and signum == signal.SIGUSR1 else None
        stop = Preempted(trainer.global_step, path, requeued, signum.name)
        if trainer.is_global_zero:  # now: after a requeue SLURM soon ends the processes, maybe before they exit
            print(stop, file=sys.stderr, flush=True)
        raise stop


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
