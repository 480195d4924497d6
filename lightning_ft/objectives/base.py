"""The protocol every training objective follows.

An objective turns a batch into its loss (`terms`) through the forward passes the module hands it (forward.py): the
policy's, the model being trained, and for objectives that compare against it, the reference's: the policy before
training. It loads what else it needs once the policy exists (`configure`: a teacher), and says what it logs. The
module asks it for nothing else and never asks which objective runs.
"""

# No `from __future__ import annotations`: jsonargparse resolves a subclass's inherited annotations in the subclass's
# module (see methods/base.py).

import dataclasses
from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import torch

from lightning_ft.constants import DType, Task
from lightning_ft.forward import Forward


class Terms(NamedTuple):
    """One batch's loss, what it is a mean over, and what else to log."""

    loss: torch.Tensor  # mean over `count`
    count: int  # label tokens, examples or pairs: the batch's weight in its optimizer step and in eval means
    logged: dict[str, torch.Tensor]  # more means over `count`, logged as {stage}_{name}
    logits: torch.Tensor | None = None  # a classifier's logits, for the metric callbacks
    weights: dict[str, int] | None = None  # what a logged term is a mean over where not `count` (KTO: by label)

    def weight(self, name: str) -> int:
        """What the logged term `name` (or the loss) is a mean over: its weight in means over many batches."""
        return (self.weights or {}).get(name, self.count)


class Objective(ABC):
    """A training objective: subclasses are dataclasses whose typed fields are the hyperparameters."""

    #: What validation and test log besides {stage}_loss (the `logged` names of `terms` when not training), each
    #: accumulated exactly across processes.
    eval_logged: ClassVar[tuple[str, ...]] = ()
    #: True when the loss at evaluation is the mean negative log-likelihood of the label tokens: its exp is the
    #: perplexity.
    loss_is_nll: ClassVar[bool] = False
    #: True when `configure` must be given the reference's forward passes.
    needs_reference: ClassVar[bool] = False
    #: What it trains on, as the data format calls it (`DataFormat.unit`): examples, or preference pairs.
    unit: ClassVar[str] = "examples"

    def __getstate__(self) -> dict:
        """Its hyperparameters only: what `configure` loaded (a teacher, the reference) is never pickled or copied,
        so the module's hparams keep the objective (Lightning drops what cannot be pickled)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @property
    def precomputes_reference(self) -> bool:
        """Whether the reference's log-probabilities are computed once, before training (`reference: precomputed`)."""
        return self.needs_reference and getattr(self, "reference", "live") == "precomputed"

    @classmethod
    def class_path(cls) -> str:
        """The import path configurations and checkpoints name the objective by."""
        return f"{cls.__module__}.{cls.__qualname__}"

    def check(self, task: Task) -> None:
        """Reject bad settings before any weight is loaded (not in __post_init__: an error raised while
        jsonargparse builds an optional argument reaches the user as its multi-line report of the union's types)."""

    def configure(
        self, policy: Forward, tokenizer, *, dtype: DType, trust_remote_code: bool, reference: Forward | None = None
    ) -> None:
        """Load what the objective needs besides the policy (frozen models in `dtype`), once the policy is built;
        keep the reference (given when `needs_reference`)."""

    @abstractmethod
    def terms(self, policy: Forward, batch: dict, training: bool) -> Terms:
        """The batch's loss through the policy's forward passes; `training` is False at validation and test."""
