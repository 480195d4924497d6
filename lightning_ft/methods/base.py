"""The protocol every adaptation method follows.

A method decides which weights train (`apply`), which of them a checkpoint must hold
(`trainable_state_dict` / `load_trainable_state_dict`), whether they fold back into the base
weights (`merge`) and how they ship on their own (`save_adapter` / `load_adapter`). The module and
the CLI see nothing else of it.

Methods import peft inside the functions that use it: peft imports bitsandbytes, 2 s that parsing a configuration
(every `--help`) must not wait for.
"""

# No `from __future__ import annotations` here: jsonargparse resolves a subclass's inherited annotations in the
# subclass's module, where `ClassVar` is not imported; a string annotation there turns every option unvalidated.

import importlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lightning_ft.anatomy import classifier_heads
from lightning_ft.errors import UserError


class Method(ABC):
    """An adaptation method: subclasses are dataclasses whose typed fields are the hyperparameters."""

    #: True when a checkpoint must hold every weight (full fine-tuning), not just the trainable ones.
    saves_full_model: ClassVar[bool] = False
    #: False when packed rows (examples told apart only by position ids) would leak between examples.
    supports_packing: ClassVar[bool] = True
    #: False when the method's wrapper changes the model's forward itself (prefix tuning feeds past key values), so
    #: the loss must come from the model's own logits rather than from its backbone's hidden states (see loss.py).
    hidden_state_loss: ClassVar[bool] = True

    #: True when `merge` folds the trained weights into plain base weights (else it says why it cannot).
    can_merge: ClassVar[bool] = False
    #: The library whose format `save_adapter` writes ("peft"), or None when only lightning_ft can load it back.
    adapter_library: ClassVar[str | None] = "peft"

    @classmethod
    def class_path(cls) -> str:
        """The import path configurations, checkpoints and export records name the method by."""
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def fit_strategy(cls, strategy: str, settings) -> None:
        """Adjust the method's parsed settings (`--model.method.init_args`, a jsonargparse Namespace, before the
        method is built) to what the Lightning strategy class named `strategy` needs, or refuse in one line."""

    def compute_dtypes(self) -> set[str]:
        """Dtypes the method computes in besides its weights' own (a 4-bit base's compute dtype), for the export's
        tolerance."""
        return set()

    def adapter_loading_code(self, auto_class: str, base_model: str) -> str:
        """Python that loads what `save_adapter` wrote into PATH without lightning_ft (for the model card)."""
        return (
            f"from peft import PeftModel\nfrom transformers import {auto_class}\n\n"
            f"base = {auto_class}.from_pretrained({base_model!r})\nmodel = PeftModel.from_pretrained(base, PATH)"
        )

    def check(self, *, gradient_checkpointing: bool) -> None:
        """Reject incompatible settings before any weight is loaded."""

    def quantization_config(self):
        """A transformers quantization config the base must be loaded with, or None."""

    @abstractmethod
    def apply(self, model: nn.Module, task: str) -> nn.Module:
        """Freeze / inject into `model` and return the model to train."""

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to restore this method's training state."""
        if self.saves_full_model:
            return model.state_dict()
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load what `trainable_state_dict` saved into a freshly applied model."""
        expected = self.trainable_state_dict(model).keys()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise UserError(f"{self} weights do not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.load_state_dict(state, strict=False)

    def adapters_off(self, model: nn.Module) -> AbstractContextManager | None:
        """A context in which `model` computes as its base model does (what preference objectives compare against,
        with no second copy of the model), or None when the method trains the base weights themselves."""
        from peft import PeftModel

        return model.disable_adapter() if isinstance(model, PeftModel) else None

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold the trained weights into plain base weights and return the plain model (when `can_merge`)."""
        raise UserError(f"{type(self).__name__} cannot be merged into the base weights")

    def save_adapter(self, model: nn.Module, directory: Path) -> None:
        """Write the trained weights alone, in peft's format (adapter_config.json + adapter_model.safetensors), so
        `PeftModel.from_pretrained(base, directory)` loads them without lightning_ft."""
        from peft import PeftModel

        if not isinstance(model, PeftModel):
            raise UserError(f"{type(self).__name__} has no adapter to save apart from the model")
        model.save_pretrained(directory)

    def load_adapter(self, base: nn.Module, directory: Path, task: str) -> nn.Module:
        """The base with what `save_adapter` wrote applied, ready for inference."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base, directory)


def method_class(class_path: str) -> type[Method] | None:
    """The Method subclass a class path names (`Method.class_path`), or None when it does not import or names
    something else."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None) if module else None
    except ImportError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Method) else None


def unfreeze_classifier_head(model: nn.Module) -> None:
    """Make the freshly initialised classification head trainable (it has no pretrained weights): it must train
    with every method."""
    for head in classifier_heads(model):
        head.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a packed 4-bit weight counts its unpacked elements."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":  # two 4-bit values per byte of quant storage (as peft counts)
            n *= 2 * getattr(p, "quant_storage", torch.uint8).itemsize
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
