"""Checkpoint files: written atomically, read without running code, and the newest readable one found for a resume.

Lightning's own writer buffers the whole checkpoint in memory and renames it without an fsync (a power loss can
leave an empty file under the final name); its reader unpickles whatever the file names. A checkpoint can come
from anywhere (a colleague, a hub), and unpickling can run any code it names: here every checkpoint is read with
`torch.load(weights_only=True)`, which builds tensors and plain data only, and a folder checkpoint (FSDP, DeepSpeed)
is scanned for anything else before a library that unpickles freely gets to read it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import random
from pathlib import Path

import torch
from fsspec.utils import get_protocol
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_ft.errors import UserError, first_line
from lightning_ft.files import remove_partial_files, write_atomically
from lightning_ft.methods.base import Method
from lightning_ft.objectives.base import Objective

# DeepSpeed pickles two plain-data classes of its own into its optimizer state files (and reads them back itself).
DEEPSPEED_GLOBALS = {"deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.runtime.fp16.loss_scaler.LossScaler"}


class UnreadableCheckpoint(UserError):
    """A checkpoint that is missing, cut short, corrupt, or would run code when unpickled."""


def unsafe_globals(path: Path) -> list[str]:
    """What unpickling `path` would import beyond tensors and plain data (read without executing anything)."""
    return torch.serialization.get_unsafe_globals_in_checkpoint(path)


def load_checkpoint_file(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """A one-file checkpoint's contents, or one clear error: not there, cut short / corrupt, or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableCheckpoint(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        try:
            names = ", ".join(unsafe_globals(path)) or "code"
        except Exception:  # noqa: BLE001 - the file is not even a readable archive: say what torch.load said
            raise UnreadableCheckpoint(f"{path}: not a readable checkpoint ({gist(err)})") from None
        raise UnreadableCheckpoint(
            f"{path}: refused: unpickling it would run {names}; checkpoints are loaded as tensors and plain data "
            "only (torch.load weights_only=True), and lightning_ft never writes anything else into them"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch reports a torn zip archive as RuntimeError, EOFError, ...
        raise UnreadableCheckpoint(f"{path}: not a readable checkpoint, cut short or corrupt ({gist(err)})") from None


def gist(err: BaseException) -> str:
    """The first sentence of an error's first line: torch follows "failed finding central directory" with four
    sentences of advice."""
    return first_line(err).split(". ")[0]


# What a torch.distributed.checkpoint `.metadata` pickle may name: its index dataclasses and the torch types they hold.
DCP_GLOBALS = {
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    *(
        f"torch.distributed.checkpoint.metadata.{name}"
        for name in (
            *("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata"),
            *("ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING"),
        )
    ),
    "torch.Size",
    "torch.serialization._get_layout",
    "collections.OrderedDict",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
}
ZIP_MAGIC, PICKLE_PROTOCOL = b"PK\x03\x04", 0x80


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data, torch dtypes and the DCP index classes; anything else it would import is refused
    before it is imported (so before any of it can run)."""

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in DCP_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unpickling it would run {full}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds storages of torch's legacy format, which is not checked (re-save it)")


def restricted_load(path: Path):
    """A plain pickle file's contents (e.g. a DCP `.metadata`), read with RestrictedUnpickler; every pickle in it
    is checked (torch's legacy format is several in a row), the first one returned."""
    try:
        with path.open("rb") as handle:
            size, loaded = path.stat().st_size, []
            while handle.tell() < size:
                loaded.append(RestrictedUnpickler(handle).load())
            return loaded[0] if loaded else None
    except pickle.UnpicklingError as err:
        raise UnreadableCheckpoint(f"{path}: refused: {err}") from None
    except Exception as err:  # noqa: BLE001 - a torn or foreign pickle: one line either way
        raise UnreadableCheckpoint(f"{path}: not a readable checkpoint ({gist(err)})") from None


def check_torch_archive(path: Path, source=None) -> None:
    """Refuse a torch.save archive (a file, or `source`: a slice of one) whose pickle would import anything beyond
    tensors, plain data and DeepSpeed's two config classes."""
    try:
        names = [name for name in unsafe_globals(source or path) if name not in DEEPSPEED_GLOBALS]
    except Exception as err:  # noqa: BLE001
        raise UnreadableCheckpoint(f"{path}: not a readable checkpoint ({gist(err)})") from None
    if names:
        raise UnreadableCheckpoint(f"{path}: refused: unpickling it would run {', '.join(names)}")


def check_folder_checkpoint(folder: Path) -> None:
    """Refuse a sharded checkpoint any of whose pickles would run code, checking every file before a library reads
    it: torch's DCP reader unpickles `.metadata` with plain pickle.load and the non-tensor items of its `.distcp`
    shards with torch.load(weights_only=False); DeepSpeed reads its `*.pt` state files without weights_only.

    A torch.save archive is checked with torch's own scan; any other pickle (a `.metadata`) is read with
    RestrictedUnpickler; a `.distcp` shard item by item, where its `.metadata` says each one is. Files that are no
    pickle (DeepSpeed's `latest`, its `zero_to_fp32.py`) are read by no loader as code and are let be.
    """
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if path.suffix == ".distcp":
            continue  # checked through the .metadata that indexes it (no reader opens a shard without one)
        with path.open("rb") as handle:
            head = handle.read(4)
        if path.name.endswith(".metadata"):
            check_distcp_items(path, restricted_load(path))
        elif head == ZIP_MAGIC:
            check_torch_archive(path)
        elif head[:1] == bytes([PICKLE_PROTOCOL]):
            restricted_load(path)


def check_distcp_items(metadata_path: Path, metadata) -> None:
    """The non-tensor items of the shards a DCP `.metadata` indexes: each is a torch.save archive that torch reads
    with weights_only=False (tensors it reads with weights_only=True)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    folder = metadata_path.parent
    for index, info in (getattr(metadata, "storage_data", None) or {}).items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        shard = folder / info.relative_path
        if info.transform_descriptors:
            raise UnreadableCheckpoint(
                f"{shard}: refused: item {index.fqn} is stored transformed, so it cannot be checked"
            )
        try:
            with shard.open("rb") as handle:
                handle.seek(info.offset)
                item = io.BytesIO(handle.read(info.length))
        except OSError as err:
            raise UnreadableCheckpoint(f"{shard}: not a readable checkpoint ({gist(err)})") from None
        check_torch_archive(shard, item)


def check_checkpoint(path: Path) -> None:
    """Fail now, in one line, on a checkpoint that cannot be resumed from."""
    path = Path(path)
    if path.is_dir():
        check_folder_checkpoint(path)
    else:
        load_checkpoint_file(path, mmap=True)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader / writer, with atomic fsynced writes and weights-only reads (local paths;
    remote ones, e.g. s3://, keep Lightning's own handling)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or not is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomically(Path(path), lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        if not is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_checkpoint_file(Path(path), map_location=map_location or "cpu")


def is_local(path) -> bool:
    return get_protocol(str(path)) in ("file", "local")


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint holds; UnreadableCheckpoint when it cannot be resumed from.

    Reads only the pickled metadata (mmap: tensors stay on disk). Sharded checkpoints are folders: FSDP's keep the
    step in `meta.pt`, DeepSpeed's in the rank-0 model states file.
    """
    if path.is_dir():
        check_folder_checkpoint(path)
        candidates = [path / "meta.pt", *sorted(path.glob("*/mp_rank_00_model_states.pt"))]
        path = next((c for c in candidates if c.is_file()), path)
    checkpoint = load_checkpoint_file(path, mmap=True)
    if "global_step" not in checkpoint:
        raise UnreadableCheckpoint(f"{path}: not a training checkpoint (no global_step)")
    return int(checkpoint["global_step"])


def newest_checkpoint(run_dir: Path, set_aside: bool = False) -> Path | None:
    """The readable checkpoint with the most training steps in a run dir, the newest file among equals.

    Candidates: `checkpoints/*.ckpt` and Lightning's SLURM `hpc_ckpt_*.ckpt`. Lightning itself resumes from the
    highest-numbered hpc checkpoint even when a later ModelCheckpoint file exists, and `--ckpt_path last` ignores
    hpc checkpoints; neither is right after a requeue, so the step count decides. An unreadable one (a write cut
    short by a power loss, a corrupt disk, a file that would run code) is reported and passed over, so the run
    falls back to the previous good one; with `set_aside`, it is also renamed to NAME.unreadable (kept for a look,
    and out of the way of the run's next save under that name, which Lightning would otherwise divert to NAME-v1).
    """
    candidates = [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    steps = {}
    for path in sorted(candidates):
        try:
            steps[path] = checkpoint_step(path)
        except UnreadableCheckpoint as err:
            if set_aside:
                with contextlib.suppress(FileNotFoundError):  # another process of this run set it aside first
                    path.rename(path.with_name(path.name + ".unreadable"))
            rank_zero_warn(f"skipping checkpoint {err}" + (f"; renamed to {path.name}.unreadable" if set_aside else ""))
    return max(steps, key=lambda path: (steps[path], path.stat().st_mtime), default=None)


def resume_point(ckpt_path: str | None, run_dir: Path, tidy: bool = False) -> str | None:
    """What `fit` resumes from.

    `auto` (the default; `last` means the same): the newest readable checkpoint in the run dir, or the start when
    there is none, so rerunning a killed command continues it. A path: that checkpoint, checked now (a torn or
    unsafe file is one error line, before a model loads). `null`: the start, refused when the run dir already
    holds checkpoints (never overwritten). A requeued SLURM job always continues from the newest checkpoint.

    `tidy` (the run about to train; not a SLURM submission, whose job may be writing there) removes the temp files
    of saves a kill interrupted and sets unreadable checkpoints aside.
    """
    if tidy:
        for leftover in remove_partial_files(run_dir / "checkpoints"):
            rank_zero_info(f"removed {leftover}: a checkpoint write that a kill cut short")
    requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    if ckpt_path in ("auto", "last") or requeued:
        newest = newest_checkpoint(run_dir, set_aside=tidy)
        rank_zero_info(
            f"resuming from {newest}" if newest else f"no checkpoint in {run_dir} yet: training from the start"
        )
        return str(newest) if newest else None
    if ckpt_path is None:
        newest = newest_checkpoint(run_dir, set_aside=tidy)
        if newest:
            raise UserError(
                f"--ckpt_path null starts afresh, but {run_dir} holds {newest}: resume with --ckpt_path auto, or "
                "choose another --trainer.default_root_dir"
            )
        return None
    check_checkpoint(Path(ckpt_path))
    return ckpt_path


# -- what a checkpoint holds besides the weights: RNG states, plain hyperparameters, the base's identity --


def rng_states() -> dict:
    """The RNG states training draws from (dropout, sampling), for an exact resume.

    Not Lightning's _collect_rng_states: it includes NumPy's state, an ndarray that `torch.load(weights_only=True)`
    refuses, and nothing here draws from NumPy.
    """
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def plain_hyperparameters(hparams) -> dict:
    """Hyperparameters with settings objects (a Method, an Objective, Optim) as the class_path / init_args data
    LightningCLI writes, so `load_from_checkpoint` rebuilds them (through LightningCLI's instantiator) from a
    weights-only read."""

    def plain(value):
        if dataclasses.is_dataclass(value) and isinstance(value, Method | Objective):
            return {"class_path": value.class_path(), "init_args": dataclasses.asdict(value)}
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    plain_values = {key: plain(value) for key, value in dict(hparams).items()}
    return {"_instantiator": "lightning.pytorch.cli.instantiate_module", **plain_values}


def base_fingerprint(model: nn.Module) -> dict:
    """What makes two base models' weights interchangeable, from the Hugging Face config (paths may move)."""
    config = getattr(model, "config", None)
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    return {key: getattr(config, key, None) for key in keys}
