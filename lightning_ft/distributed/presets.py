"""What the strategy presets need from the rest of a configuration, checked or filled in before anything is built.

These work on the parsed configuration (jsonargparse Namespaces), so a mistake is one line before a model loads.
"""

from __future__ import annotations

import torch
from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info

from lightning_ft.errors import UserError


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


def fit_quant_storage(trainer: Namespace, model: Namespace) -> None:
    """QLoRA under FSDP (1): FSDP flattens each unit's parameters into one tensor, which needs one floating dtype.

    QLoRA keeps everything but the 4-bit weights in float32 (peft's k-bit preparation upcasts norms and
    embeddings; adapters are float32), so the packed 4-bit data must be stored as float32 too (same bytes, a
    quarter of the elements): uint8 fails with "Cannot flatten integer dtype tensors", bfloat16 with "Must flatten
    tensors with uniform dtype" (both seen with torch 2.13's FSDP on CPU).
    """
    method = model.get("method")
    if strategy_name(trainer) != "FSDPStrategy" or not isinstance(method, Namespace):
        return
    if not str(method.class_path).endswith("QLoRA"):
        return
    storage = method.init_args.get("quant_storage", "uint8")
    if storage == "uint8":
        method.init_args.quant_storage = "float32"
        rank_zero_info("QLoRA under FSDP: storing 4-bit weights as float32 (FSDP flattens one dtype per unit)")
    elif storage != "float32":
        raise UserError(
            f"--model.method.quant_storage {storage} cannot be flattened by FSDP with QLoRA's float32 weights; "
            "use float32 (or leave the default)"
        )
