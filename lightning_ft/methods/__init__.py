"""Adaptation methods. Adding one: a new file with a `Method` subclass, plus its line in METHODS."""

from lightning_ft.methods.base import Method, count_parameters
from lightning_ft.methods.bottleneck import BottleneckAdapter
from lightning_ft.methods.full import Full
from lightning_ft.methods.lora import LoRA
from lightning_ft.methods.prefix import PrefixTuning
from lightning_ft.methods.qlora import QLoRA

# The methods `--model.method NAME` knows by their short name (any Method subclass works by full class path).
METHODS = (Full, LoRA, QLoRA, PrefixTuning, BottleneckAdapter)

__all__ = ["METHODS", "BottleneckAdapter", "Full", "LoRA", "Method", "PrefixTuning", "QLoRA", "count_parameters"]
