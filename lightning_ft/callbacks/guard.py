"""StepGuard: a step whose loss or gradients are NaN/Inf is skipped or stops the run; running out of memory in a step
ends in advice instead of a traceback."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_ft.callbacks.preemption import save_now
from lightning_ft.distributed import all_gather_objects
from lightning_ft.errors import UserError


class NonFiniteLoss(UserError):
    """Training stopped on non-finite steps, after saving the last good state."""


class StepGuard(Callback):
    """Checks every optimizer step for a non-finite loss or gradient before the optimizer sees it.

    A skipped step leaves the weights and the optimizer's moments as they were (its gradients are dropped, and
    AdamW passes over parameters without one); the learning-rate schedule and the data move on. Under DeepSpeed,
    which owns the gradients, a non-finite step always stops the run.

    Args:
        nonfinite: "skip" the step's update and log the ids (source lines) of its examples, or "stop": save the
            last good state (the bad update is not applied) and stop with an error naming them.
        max_in_a_row: that many non-finite steps in a row stop the run even when skipping: it has diverged.
    """

    def __init__(self, nonfinite: Literal["skip", "stop"] = "skip", max_in_a_row: int = 3) -> None:
        if max_in_a_row < 1:
            raise UserError(f"--guard.max_in_a_row must be at least 1, got {max_in_a_row}")
        self.nonfinite = nonfinite
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0
        self._step = -1
        self._example_ids: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []
        self._batch_shape: tuple[int, ...] | None = None
        self._stop: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and isinstance(trainer.strategy, DeepSpeedStrategy) and self.nonfinite == "skip":
            rank_zero_info("under DeepSpeed a non-finite step stops the run: DeepSpeed owns the gradients to skip")
        self.in_a_row, self._step, self._stop = 0, -1, None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step != self._step:  # the first micro-batch of an optimizer step
            self._step, self._example_ids, self._losses = trainer.global_step, [], []
        if isinstance(batch, dict):
            if "example_ids" in batch:  # kept as tensors: read only when a step goes wrong (no sync per batch)
                self._example_ids.append(batch["example_ids"])
            self._batch_shape = tuple(batch["input_ids"].shape) if "input_ids" in batch else None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach().float())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            grads = []  # fp16's loss scaler skips overflowing steps itself (and they come in runs while it backs off)
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2 shards: each checks its own
        values = [*self._losses, *(torch._foreach_norm(local) if local else [])]
        finite = (
            bool(torch.stack([v.to(values[0].device).reshape(()) for v in values]).isfinite().all()) if values else True
        )
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self.in_a_row = 0
            return
        losses = ", ".join(f"{float(v):g}" for v in self._losses)
        examples = self._examples(trainer)
        what = f"step {trainer.global_step + 1}: non-finite loss or gradient (loss {losses}) from {examples}"
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise NonFiniteLoss(
                f"{what}; stopped before the update (DeepSpeed cannot skip it); resume from the last checkpoint"
            )
        for group in optimizer.param_groups:  # nothing to step with: weights and moments stay as they were
            for p in group["params"]:
                p.grad = None
        self.in_a_row += 1
        self.skipped += 1
        stop = self.nonfinite == "stop" or self.in_a_row >= self.max_in_a_row
        if not stop:
            rank_zero_warn(f"{what}; update skipped ({self.skipped} skipped so far)")
        elif self.in_a_row > 1:
            self._stop = f"{what}; {self.in_a_row} non-finite steps in a row: the run has diverged (lower the lr?)"
        else:
            self._stop = what

    def _examples(self, trainer: Trainer) -> str:
        """The step's examples on every process, by source line (gathered: the bad one may be another's)."""
        ids = [i for part in self._example_ids for i in part.tolist()]
        ids = [i for part in all_gather_objects(ids) for i in part]
        describe = getattr(trainer.datamodule, "describe_examples", None)
        return describe(sorted(set(ids))) if describe else f"example ids {sorted(set(ids))}"

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self._stop and trainer.global_step != self._step:  # the skipped step is done: a consistent state
            message, self._stop = self._stop, None
            path = save_now(trainer)
            raise NonFiniteLoss(f"{message}; saved the last good state to {path} (a rerun resumes after this step)")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if is_out_of_memory(exception) and self._batch_shape:
            rows, width = self._batch_shape[0], self._batch_shape[-1]
            exception.add_note(
                f"out of memory at step {trainer.global_step + 1} on a batch of {rows} x {width} tokens: lower "
                "--data.batch_size (raise --trainer.accumulate_grad_batches to keep the global batch), lower "
                "--data.max_length, set --model.gradient_checkpointing true, or train with --model.method QLoRA"
            )


def is_out_of_memory(exception: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(exception, torch.OutOfMemoryError) or (
        isinstance(exception, RuntimeError) and "can't allocate memory" in str(exception)
    )
