"""Progress people expect: a rich bar on a terminal, plain periodic lines in a log file (SLURM), both with loss,
learning rate, real tokens per second and the time left."""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only

from lightning_ft.callbacks.throughput import Throughput


def training_figures(trainer: Trainer) -> dict[str, str]:
    """Learning rate and this process's real tokens per second (the throughput callback's count)."""
    figures = {}
    if trainer.optimizers:
        figures["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.2e}"
    throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
    if throughput is not None and throughput.local_tokens_per_s():
        figures["tok/s"] = f"{throughput.local_tokens_per_s():,.0f}"
    return figures


class RichProgress(RichProgressBar):
    """Lightning's rich bar, showing the learning rate and tokens/s beside the logged loss."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        return {**super().get_metrics(trainer, pl_module), **training_figures(trainer)}


class LogLines(ProgressBar):
    """One line every `every_n_steps` optimizer steps: no carriage returns to fill a log (ConsoleSummary prints the
    validations)."""

    def __init__(self, every_n_steps: int = 10) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._started = 0.0
        self._first_step = 0

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started, self._first_step = time.monotonic(), trainer.global_step

    @rank_zero_only
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._enabled or step % self.every_n_steps or trainer.fit_loop._should_accumulate():
            return
        total = trainer.estimated_stepping_batches
        self.print_line(trainer, pl_module, f"step {step}/{total if total != float('inf') else '?'}")

    def print_line(self, trainer: Trainer, pl_module: LightningModule, what: str) -> None:
        metrics = {**self.get_metrics(trainer, pl_module), **training_figures(trainer)}
        metrics.pop("v_num", None)
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        print(f"epoch {trainer.current_epoch}  {what}  {shown}{self.time_left(trainer)}", flush=True)

    def time_left(self, trainer: Trainer) -> str:
        done, total = trainer.global_step - self._first_step, trainer.estimated_stepping_batches
        if total == float("inf") or done <= 0:
            return ""
        seconds = (time.monotonic() - self._started) / done * (total - trainer.global_step)
        return f"  ETA {timedelta(seconds=round(seconds))}"


def progress_bar() -> ProgressBar:
    """The rich bar when the output is a terminal, plain lines otherwise."""
    return RichProgress() if sys.stdout.isatty() else LogLines()
