"""Sharding units for FSDP (auto-wrap policy) and FSDP2 (`fully_shard`): one unit per transformer block; the FSDP2
strategy that saves only trained weights.

Hugging Face models name their blocks in `_no_split_modules` (LlamaDecoderLayer, BertLayer, ...), so the same
code shards any architecture without a per-model list.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
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


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy (FSDP2) that gathers, saves and loads only the weights being trained.

    Lightning gathers every weight of the model to save one file (the whole frozen base of a LoRA run, to rank
    0's memory, only for the module to drop it again), and its sharded loading asks the shards for every weight,
    so an adapter-only sharded checkpoint cannot be loaded. Frozen weights come from the base model at every start
    anyway; torch's `ignore_frozen_params` leaves them out of both.
    """

    def lightning_module_state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = not self._save_distributed_checkpoint
        options = StateDictOptions(full_state_dict=full, cpu_offload=True, ignore_frozen_params=True)
        return get_model_state_dict(self.model, options=options)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        # Switching save mode at a path (a one-file last.ckpt where shards were, or the reverse): Lightning removes
        # the old one on every process at once, and all but one fail with FileNotFoundError. Remove it once here.
        path = Path(self.broadcast(filepath))
        other_mode = path.exists() and path.is_dir() != self._save_distributed_checkpoint
        if self.broadcast(other_mode):  # process 0 decides: the others may look after it removed the file
            if self.global_rank == 0:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            self.barrier("remove the checkpoint of the other save mode")
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        from lightning.fabric.strategies.model_parallel import _distributed_checkpoint_load, _is_sharded_checkpoint
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only)
        weights = {"state_dict": get_model_state_dict(self.model, options=StateDictOptions(ignore_frozen_params=True))}
        _distributed_checkpoint_load(weights, path)
        set_model_state_dict(self.model, weights["state_dict"], options=StateDictOptions(strict=False))
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            state = {key: get_optimizer_state_dict(self.model, optimizer)}
            _distributed_checkpoint_load(state, path)
            set_optimizer_state_dict(self.model, optimizer, state[key], options=StateDictOptions(cpu_offload=True))
        # Our own run's metadata (steps, loops, hyperparameters with the method's settings): not weights only.
        return torch.load(path / "meta.pt", map_location="cpu", weights_only=bool(weights_only))
