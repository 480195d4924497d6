"""What the strategy presets need from the rest of a configuration, checked or filled in before anything is built.

These work on the parsed configuration (jsonargparse Namespaces), so a mistake is one line before a model loads.
"""

from __future__ import annotations

import pydoc

import torch
from jsonargparse import Namespace

from lightning_ft.errors import UserError
from lightning_ft.methods.base import method_class


def strategy_name(trainer: Namespace) -> str:
    strategy = trainer.get("strategy")
    return str(strategy.class_path).rsplit(".", 1)[-1] if isinstance(strategy, Namespace) else str(strategy)


GPU_ONLY_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy")  # Lightning 2.6 refuses them on CPU


def check_strategy(trainer, cuda: bool | None = None) -> None:
    """A strategy the accelerator cannot run fails here, in one line, not in a traceback after setup.

    `cuda`: whether the run will have CUDA GPUs (default: whether this process has them and is asked to use them).
    """
    name = strategy_name(trainer)
    gpu_only = name in GPU_ONLY_STRATEGIES or name.startswith(("fsdp", "deepspeed"))
    if cuda is None:
        cuda = trainer.accelerator != "cpu" and torch.cuda.is_available()
    if gpu_only and not cuda:
        raise UserError(
            f"--trainer.strategy {name} needs CUDA GPUs; on CPU use configs/strategy/ddp.yaml or "
            "configs/strategy/fsdp2.yaml"
        )


MODEL_PARALLEL_STRATEGIES = ("ModelParallelStrategy", "FSDP2Strategy")


def fill_data_parallel_size(trainer) -> None:
    """ModelParallelStrategy (FSDP2) with `data_parallel_size: auto` and no tensor parallelism: all devices.

    Lightning reads "auto" as the number of nodes (made for tensor parallelism within nodes); our preset shards
    data-parallel over every device, so the size is devices x nodes.
    """
    strategy = trainer.get("strategy")
    if not isinstance(strategy, Namespace) or not str(strategy.class_path).endswith(MODEL_PARALLEL_STRATEGIES):
        return
    args = strategy.init_args
    if args.get("data_parallel_size") == "auto" and args.get("tensor_parallel_size") == 1:
        if not isinstance(trainer.devices, int) and not str(trainer.devices).isdigit():
            raise UserError("--trainer.devices must be a number with configs/strategy/fsdp2.yaml (e.g. 4)")
        args.data_parallel_size = int(trainer.devices) * int(trainer.num_nodes)


def check_reference(trainer: Namespace, model: Namespace) -> None:
    """An objective comparing against the model before training needs a reference the method and strategy can give:
    with Full fine-tuning that is a frozen copy, and a sharded model cannot be copied (each process holds a shard)."""
    objective, method = model.get("objective"), model.get("method")
    if not isinstance(objective, Namespace):
        return
    cls = pydoc.locate(str(objective.class_path))  # jsonargparse checked that it names an Objective
    settings = objective.get("init_args") or Namespace()
    if not getattr(cls, "needs_reference", False) or settings.get("reference") == "precomputed":
        return
    trains_the_base = method is None or getattr(method_class(str(method.class_path)), "saves_full_model", False)
    strategy, name = trainer.get("strategy"), strategy_name(trainer)
    stage = strategy.get("init_args", Namespace()).get("stage") if isinstance(strategy, Namespace) else None
    sharded = name in ("FSDPStrategy", *MODEL_PARALLEL_STRATEGIES) or name.startswith(("fsdp", "deepspeed_stage_3"))
    if trains_the_base and (sharded or (name == "DeepSpeedStrategy" and stage == 3)):
        raise UserError(
            f"--model.objective {cls.__name__} with Full fine-tuning under {name}: the frozen reference copy of a "
            "sharded model cannot be made; set --model.objective.reference precomputed, or train an adapter (LoRA)"
        )


def fit_method_to_strategy(trainer: Namespace, model: Namespace) -> None:
    """The method adjusts its settings to the strategy, or refuses it (QLoRA's 4-bit storage under FSDP)."""
    method = model.get("method")
    if isinstance(method, Namespace):  # jsonargparse checked that the class path names a Method
        settings = method.get("init_args") or Namespace()  # a method without fields has none
        method_class(str(method.class_path)).fit_strategy(strategy_name(trainer), settings)
