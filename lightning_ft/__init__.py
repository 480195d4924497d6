"""lightning_ft: fine-tune and evaluate language models with PyTorch Lightning."""

import importlib

from lightning_ft.console import quiet_log_lines

quiet_log_lines()  # e.g. bitsandbytes' note on a missing optional kernel, logged when it is first imported

__version__ = "0.1.0"

# The public names, imported on first use (PEP 562): `lightning-ft --help` and the light commands must not pay for
# importing torch, Lightning, transformers and peft.
_EXPORTS = {
    "FineTuneDataModule": "lightning_ft.data",
    "FineTuneModule": "lightning_ft.module",
    **{
        name: "lightning_ft.methods"
        for name in ("BottleneckAdapter", "Full", "LoRA", "Method", "PrefixTuning", "QLoRA")
    },
}
__all__ = [
    "BottleneckAdapter",
    "FineTuneDataModule",
    "FineTuneModule",
    "Full",
    "LoRA",
    "Method",
    "PrefixTuning",
    "QLoRA",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lightning_ft' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(_EXPORTS[name]), name)
    return value
