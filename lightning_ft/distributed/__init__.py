"""Helpers for Lightning's distributed strategies (which modules to shard) and SLURM jobs (slurm.py)."""

from lightning_ft.distributed.gather import all_gather_objects
from lightning_ft.distributed.sharding import (
    DeepSpeedStrategy,
    FSDP2Strategy,
    TransformerBlocks,
    shard_transformer_blocks,
)

__all__ = [
    "DeepSpeedStrategy",
    "FSDP2Strategy",
    "TransformerBlocks",
    "all_gather_objects",
    "shard_transformer_blocks",
]
