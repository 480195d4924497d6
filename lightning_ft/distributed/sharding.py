"""Sharding units for FSDP (auto-wrap policy) and FSDP2 (`fully_shard`): one unit per transformer block.

Hugging Face models name their blocks in `_no_split_modules` (LlamaDecoderLayer, BertLayer, ...), so the same
code shards any architecture without a per-model list.
"""

from __future__ import annotations

from torch import nn


def transformer_block_names(model: nn.Module) -> set[str]:
    """Class names of the transformer blocks of every Hugging Face model inside `model`."""
    return {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or ())}


class TransformerBlocks:
    """FSDP auto-wrap policy wrapping each transformer block (configs/strategy/fsdp.yaml).

    FSDP asks the policy about the root module first; the block names are read from it then.
    """

    def __init__(self) -> None:
        self.names: set[str] | None = None

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if self.names is None:
            self.names = transformer_block_names(module)
        return recurse or type(module).__name__ in self.names


def shard_transformer_blocks(model: nn.Module, mesh) -> None:
    """FSDP2: `fully_shard` each transformer block, then the whole model (embeddings, head, adapters outside)."""
    from torch.distributed.fsdp import fully_shard

    names = transformer_block_names(model)
    for module in model.modules():
        if type(module).__name__ in names:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
