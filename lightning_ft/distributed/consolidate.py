"""A sharded checkpoint folder as one Lightning checkpoint file (`lightning-ft consolidate`).

FSDP / FSDP2 save `torch.distributed.checkpoint` shards (a `.metadata` index, one file per process, and Lightning's
`meta.pt` with the step, loops and hyperparameters); DeepSpeed ZeRO saves partitioned weights and optimizer states
per process. The result has the usual `state_dict` (plus everything else the trainer saved), so `--ckpt_path`,
`lightning-ft eval --model OUT` and `FineTuneModule.load_from_checkpoint` read it like any single-file checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lightning_ft.checkpoints import check_folder_checkpoint, load_checkpoint_file
from lightning_ft.errors import UserError
from lightning_ft.files import commit, partial_path, write_atomically


def load_distributed_checkpoint(folder: Path) -> dict:
    """Every shard of a torch.distributed.checkpoint folder in one process's memory, with Lightning's `meta.pt`
    (read as tensors and plain data only, like every checkpoint: see checkpoints.py)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    checkpoint: dict = {}
    _load_state_dict(
        checkpoint, storage_reader=FileSystemReader(folder), planner=_EmptyStateDictLoadPlanner(), no_dist=True
    )
    meta = folder / "meta.pt"
    if meta.is_file():
        checkpoint.update(load_checkpoint_file(meta))
    if "model" in checkpoint:  # FSDPStrategy's name for the weights; ModelParallelStrategy already says state_dict
        checkpoint["state_dict"] = checkpoint.pop("model")
    optimizers = sorted((key for key in checkpoint if re.fullmatch(r"optimizer_\d+", key)), key=lambda k: int(k[10:]))
    if optimizers:
        checkpoint["optimizer_states"] = [checkpoint.pop(key) for key in optimizers]
    return checkpoint


def consolidate(folder: Path, output: Path) -> str:
    """Write the folder's checkpoint as one file (atomically); the kind of checkpoint it was."""
    if not folder.is_dir():
        kind = "a single-file checkpoint already" if folder.is_file() else "not found"
        raise UserError(f"consolidate: {folder} is {kind}; give the folder of a sharded checkpoint")
    check_folder_checkpoint(folder)  # before DeepSpeed's converter, which unpickles without weights_only
    if (folder / ".metadata").is_file():
        kind = "torch.distributed.checkpoint (FSDP/FSDP2)"
        write_atomically(output, lambda f: torch.save(load_distributed_checkpoint(folder), f))
    elif (folder / "latest").is_file() or any(folder.glob("*/*_model_states.pt")):
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        kind = "DeepSpeed ZeRO"
        partial = partial_path(output)
        try:
            convert_zero_checkpoint_to_fp32_state_dict(
                folder, partial, tag=None if (folder / "latest").is_file() else "checkpoint"
            )
            commit(partial, output)  # a reader never sees half a file
        finally:
            partial.unlink(missing_ok=True)
    else:
        raise UserError(f"consolidate: {folder} holds neither FSDP shards (.metadata) nor a DeepSpeed checkpoint")
    return kind
