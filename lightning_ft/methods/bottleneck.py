"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020).

Written here because peft has none and AdapterHub's `adapters` pins transformers 4.x. Each adapter maps a
sublayer's output h to h + up(act(down(h))). It is attached to the sublayer's output projection (o_proj,
down_proj, ...) through a forward hook, so the base weights keep their names and stay loadable as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from safetensors.torch import load_file, save_file
from torch import nn

from lightning_ft.anatomy import ATTENTION_OUTPUTS, MLP_OUTPUTS, linear_module_names, sublayer_outputs
from lightning_ft.errors import UserError
from lightning_ft.methods.base import Method, unfreeze_classifier_head

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
WEIGHTS_FILE = "adapter_model.safetensors"  # peft's name; the settings travel in lightning_ft's export record


class Adapter(nn.Module):
    """h -> h + up(act(down(h))); `up` starts at zero, so the adapted model starts equal to the base."""

    def __init__(self, features: int, bottleneck: int, non_linearity: str, residual: bool, init_std: float):
        super().__init__()
        self.down = nn.Linear(features, bottleneck)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, features)
        self.residual = residual
        self.enabled = True  # False: the layer's output passes unchanged (the base model's)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        delta = self.up(self.act(self.down(h.to(self.down.weight.dtype)))).to(h.dtype)
        return h + delta if self.residual else delta


def _run_adapter(module: nn.Module, args, output):
    return module.adapter(output) if module.adapter.enabled else output


@dataclass
class BottleneckAdapter(Method):
    """Small trainable bottleneck MLPs after the attention and/or MLP sublayers of every block.

    Args:
        bottleneck_size: width of the bottleneck; overrides reduction_factor when set.
        reduction_factor: bottleneck = hidden / reduction_factor (16 is common; 2-64 the usual range).
        non_linearity: activation between the two projections.
        placement: "both" is Houlsby's adapter, "mlp" is Pfeiffer's (half the parameters, similar quality),
            "attention" only after attention.
        residual: keep the adapter's own skip connection (h + f(h)). False replaces the sublayer output by f(h),
            an ablation: the model then no longer starts equal to the base.
        attention_modules / mlp_modules: name suffixes of the output projections, for architectures the
            built-in lists do not know.
        init_std: standard deviation of the down-projection's initial weights.
    """

    bottleneck_size: int | None = None
    reduction_factor: int = 16
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    placement: Literal["attention", "mlp", "both"] = "both"
    residual: bool = True
    attention_modules: list[str] | None = None
    mlp_modules: list[str] | None = None
    init_std: float = 1e-2

    adapter_library = None  # not a peft adapter: lightning_ft puts it back

    def adapter_loading_code(self, auto_class: str, base_model: str) -> str:
        return "from lightning_ft.export import load_exported\n\nmodel = load_exported(PATH)  # base: from the record"

    def target_names(self, model: nn.Module) -> list[str]:
        attention = tuple(self.attention_modules or ATTENTION_OUTPUTS)
        mlp = tuple(self.mlp_modules or MLP_OUTPUTS)
        found = sublayer_outputs(model, attention, mlp)
        targets = [name for name, kind in found if self.placement in (kind, "both")]
        if not targets:
            raise UserError(
                f"BottleneckAdapter found no {self.placement} output projection; name them with "
                f"attention_modules / mlp_modules. Layers: {', '.join(linear_module_names(model))}"
            )
        return targets

    def apply(self, model: nn.Module, task: str) -> nn.Module:
        model.requires_grad_(False)
        for name in self.target_names(model):
            layer = model.get_submodule(name)
            features = getattr(layer, "out_features", None) or layer.nf  # nn.Linear, or GPT-2's Conv1D
            bottleneck = self.bottleneck_size or max(1, features // self.reduction_factor)
            layer.add_module("adapter", Adapter(features, bottleneck, self.non_linearity, self.residual, self.init_std))
            layer.register_forward_hook(_run_adapter)
        if task == "sequence_classification":
            unfreeze_classifier_head(model)
        return model

    @contextlib.contextmanager
    def adapters_off(self, model: nn.Module) -> Iterator[None]:
        adapters = [module for module in model.modules() if isinstance(module, Adapter)]
        for adapter in adapters:
            adapter.enabled = False
        try:
            yield
        finally:
            for adapter in adapters:
                adapter.enabled = True

    def merge(self, model: nn.Module) -> nn.Module:
        raise UserError(
            "BottleneckAdapter cannot be merged: the non-linearity between its projections has no equivalent "
            "change of the base weights; keep the adapter with the model"
        )

    def save_adapter(self, model: nn.Module, directory: Path) -> None:
        """The adapters' weights (and a classifier head it trained) as safetensors; `load_adapter` puts them back
        on a fresh base, with the settings the export record keeps."""
        state = {name: tensor.detach().contiguous() for name, tensor in self.trainable_state_dict(model).items()}
        save_file(state, Path(directory) / WEIGHTS_FILE)

    def load_adapter(self, base: nn.Module, directory: Path, task: str) -> nn.Module:
        model = self.apply(base, task)
        self.load_trainable_state_dict(model, load_file(Path(directory) / WEIGHTS_FILE))
        return model
