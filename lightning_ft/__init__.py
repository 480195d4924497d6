"""lightning_ft: fine-tune and evaluate language models with PyTorch Lightning."""

import logging

# On CPUs with AVX512-BF16, bitsandbytes looks for an optional kernel from the `kernels` package at import and
# warns when it is missing; it then uses its built-in kernel, so the warning is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from lightning_ft.data import FineTuneDataModule
from lightning_ft.methods import BottleneckAdapter, Full, LoRA, Method, PrefixTuning, QLoRA
from lightning_ft.module import FineTuneModule

__version__ = "0.1.0"
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
