"""Helpers for Lightning's distributed strategies: which modules to shard."""

from lightning_ft.distributed.sharding import TransformerBlocks, shard_transformer_blocks, transformer_block_names

__all__ = ["TransformerBlocks", "shard_transformer_blocks", "transformer_block_names"]
