"""Sharding units for FSDP (auto-wrap policy) and FSDP2 (`fully_shard`): one unit per transformer block; the FSDP2
strategy that saves only trained weights; sharded checkpoints written so that a kill mid-save tears nothing.

Which modules are the blocks is anatomy.py's knowledge (the model's own `_no_split_modules`), so the same code
shards any architecture without a per-model list.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeedStrategy
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightning_ft.anatomy import block_class_names, transformer_blocks
from lightning_ft.files import PARTIAL_SUFFIX, remove_path, replace_folder


class TransformerBlocks:
    """FSDP auto-wrap policy wrapping each transformer block (configs/strategy/fsdp.yaml).

    FSDP asks the policy about the root module first; the block names are read from it then.
    """

    def __init__(self) -> None:
        self.names: set[str] | None = None

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if self.names is None:
            self.names = block_class_names(module)
        return recurse or type(module).__name__ in self.names


def shard_transformer_blocks(model: nn.Module, mesh) -> None:
    """FSDP2: `fully_shard` each transformer block, then the whole model (embeddings, head, adapters outside)."""
    from torch.distributed.fsdp import fully_shard

    for _, block in list(transformer_blocks(model)):  # listed first: fully_shard changes each block's class
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def save_staged(strategy, path: Path, save) -> None:
    """`save(folder)` on every process into a temp folder next to `path`, renamed into place by process 0 once all
    have finished (a shared filesystem, as for any sharded checkpoint): Lightning's sharded writers write into the
    final folder, after deleting the previous checkpoint there, so a kill mid-save would leave neither."""
    staging = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    if strategy.global_rank == 0:
        remove_path(staging)  # shards of a save that a kill interrupted
    strategy.barrier("clear the staging folder")
    save(staging)
    strategy.barrier("every shard written")
    if strategy.global_rank == 0:
        replace_folder(staging, path)
    strategy.barrier("checkpoint in place")


class DeepSpeedStrategy(LightningDeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy, with its checkpoint folders written whole or not at all (see save_staged)."""

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(filepath))
        save_staged(self, path, lambda staging: super(DeepSpeedStrategy, self).save_checkpoint(checkpoint, staging))


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
        """One file (rank 0, through the atomic checkpoint IO), or a folder of shards written under a temp name and
        renamed into place once every process has finished: a kill mid-save leaves the previous checkpoint, never
        a torn folder (Lightning writes shards into the final folder, after deleting the previous one there).

        Switching save mode at a path (a one-file last.ckpt where shards were): Lightning removes the old one on
        every process at once, and all but one fail with FileNotFoundError; here process 0 removes it, once.
        """
        path = Path(self.broadcast(filepath))
        if not self._save_distributed_checkpoint:
            if self.broadcast(path.is_dir()):  # process 0 decides: the others may look after it removed the folder
                if self.global_rank == 0:
                    shutil.rmtree(path)
                self.barrier("remove the sharded checkpoint this file replaces")
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_staged(self, path, lambda staging: super(FSDP2Strategy, self).save_checkpoint(checkpoint, staging))

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
        return torch.load(path / "meta.pt", map_location="cpu", weights_only=True)  # steps, loops, hyperparameters
