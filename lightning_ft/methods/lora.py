"""LoRA (Hu et al. 2021) through peft: W x + (alpha / r) * B A x, with A (r x in) and B (out x r), B = 0 at start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from lightning_ft.anatomy import linear_module_names
from lightning_ft.errors import UserError
from lightning_ft.methods.base import Method

PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}


@dataclass
class LoRA(Method):
    """Low-rank adapters on the chosen Linear layers; the base stays frozen.

    Args:
        r: rank of the update; 8 is the usual default, 4-64 the usual range.
        alpha: scale numerator; the update is multiplied by alpha / r (alpha = 2r is common).
        dropout: dropout on the adapter input, 0.0-0.1.
        target_modules: layer names (last name part, e.g. [q_proj, v_proj]), a regex, or "all-linear".
        bias: which biases also train: "none", "lora_only" or "all".
        use_dora: DoRA, weight-decomposed LoRA (a learned magnitude per output feature).
        use_rslora: rank-stabilised scaling alpha / sqrt(r), which keeps large ranks trainable.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    bias: Literal["none", "lora_only", "all"] = "none"
    use_dora: bool = False
    use_rslora: bool = False

    can_merge = True

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise UserError(f"--model.method.r must be positive, got {self.r}")

    def peft_config(self, task: str):
        from peft import LoraConfig  # here, not at the top: see methods/base.py

        return LoraConfig(
            task_type=PEFT_TASK_TYPES[task],
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias=self.bias,
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
        )

    def apply(self, model: nn.Module, task: str) -> nn.Module:
        from peft import get_peft_model

        self._check_targets(model)
        try:
            return get_peft_model(model, self.peft_config(task))
        except ValueError as err:  # peft's "Target modules ... not found" for a regex that matches nothing
            if "not found in the base model" not in str(err):
                raise
            raise UserError(
                f"target_modules {self.target_modules!r} match no layer; "
                f"layers: {', '.join(linear_module_names(model))}"
            ) from err

    def _check_targets(self, model: nn.Module) -> None:
        """Every listed name must match a layer (peft only complains when none matches)."""
        if isinstance(self.target_modules, str):
            return
        names = [name for name, _ in model.named_modules()]
        unmatched = [t for t in self.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
        if unmatched:
            raise UserError(
                f"target_modules {unmatched} match no layer; layers: {', '.join(linear_module_names(model))}"
            )

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()
