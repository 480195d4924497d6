"""QLoRA (Dettmers et al. 2023): LoRA on a base whose Linear weights are stored in 4 bits (NF4 or FP4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import BitsAndBytesConfig

from lightning_ft.errors import UserError
from lightning_ft.loading import TORCH_DTYPES
from lightning_ft.methods.lora import LoRA

ComputeDType = Literal["bfloat16", "float16", "float32"]


def keep_canonical_layout(model: nn.Module) -> nn.Module:
    """bitsandbytes 0.50 repacks 4-bit weights in place at the first no-grad eval forward on AVX512-BF16 CPUs; later
    training forwards then run a kernel without autograd (wrong gradients), dequantize_4bit misreads the weights
    (wrong merges), and the kernel computes in bf16. Keep the canonical layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


@dataclass
class QLoRA(LoRA):
    """LoRA over a 4-bit base loaded through bitsandbytes.

    Args (beyond LoRA's):
        quant_type: "nf4" (normal-float, best for normally distributed weights) or "fp4".
        double_quant: also quantize the quantization constants (saves ~0.4 bit per weight).
        compute_dtype: dtype the 4-bit weights are dequantized to for each matmul.
        quant_storage: dtype the packed 4-bit data is stored in (the same bytes); under FSDP float32, like every
            other weight of a QLoRA model, so FSDP can flatten them (set automatically).
    """

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: ComputeDType = "bfloat16"
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"

    def check(self, *, gradient_checkpointing: bool) -> None:
        # Probe the real kernel: an old or GPU-only bitsandbytes fails here, not after the model loaded.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            import bitsandbytes.functional as bnb_functional

            bnb_functional.quantize_4bit(torch.ones(64, device=device), quant_type=self.quant_type)
        except Exception as err:  # ImportError, missing native library, unsupported device
            raise UserError(f"QLoRA needs bitsandbytes with 4-bit support on {device}: {err}") from err

    @classmethod
    def fit_strategy(cls, strategy: str, settings) -> None:
        """FSDP (1) flattens each unit's parameters into one tensor, which needs one floating dtype.

        QLoRA keeps everything but the 4-bit weights in float32 (peft's k-bit preparation upcasts norms and
        embeddings; adapters are float32), so the packed 4-bit data must be stored as float32 too (same bytes, a
        quarter of the elements): uint8 fails with "Cannot flatten integer dtype tensors", bfloat16 with "Must
        flatten tensors with uniform dtype" (both seen with torch 2.13's FSDP on CPU).
        """
        if strategy != "FSDPStrategy":
            return
        storage = settings.get("quant_storage", "uint8")
        if storage == "uint8":
            settings.quant_storage = "float32"
            rank_zero_info("QLoRA under FSDP: storing 4-bit weights as float32 (FSDP flattens one dtype per unit)")
        elif storage != "float32":
            raise UserError(
                f"--model.method.quant_storage {storage} cannot be flattened by FSDP with QLoRA's float32 weights; "
                "use float32 (or leave the default)"
            )

    def compute_dtypes(self) -> set[str]:
        return {self.compute_dtype}

    def adapter_loading_code(self, auto_class: str, base_model: str) -> str:
        # The adapter goes on the 4-bit base it was trained with.
        quantized = (
            f"BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={self.quant_type!r}, "
            f"bnb_4bit_use_double_quant={self.double_quant}, bnb_4bit_compute_dtype=torch.{self.compute_dtype})"
        )
        return (
            f"import torch\nfrom peft import PeftModel\nfrom transformers import {auto_class}, BitsAndBytesConfig\n\n"
            f"base = {auto_class}.from_pretrained({base_model!r}, quantization_config={quantized})\n"
            "model = PeftModel.from_pretrained(base, PATH)"
        )

    def quantization_config(self) -> BitsAndBytesConfig:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=TORCH_DTYPES[self.compute_dtype],
            bnb_4bit_quant_storage=getattr(torch, self.quant_storage),
        )

    def apply(self, model: nn.Module, task: str) -> nn.Module:
        from peft import prepare_model_for_kbit_training  # here, not at the top: see methods/base.py

        # Casts norms/embeddings to fp32 for stable training and keeps gradient checkpointing as configured.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=model.is_gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        return super().apply(keep_canonical_layout(model), task)

    def load_adapter(self, base: nn.Module, directory: Path, task: str) -> nn.Module:
        """On the 4-bit base, computing as in training (plain peft on an AVX512-BF16 CPU would use bitsandbytes'
        repacked kernel, which rounds to bf16 whatever compute_dtype says)."""
        return super().load_adapter(keep_canonical_layout(base), directory, task)

    def merge(self, model: nn.Module) -> nn.Module:
        """Dequantize each 4-bit base weight to compute_dtype and add the LoRA update there.

        peft's own merge re-quantizes the sum to 4 bits (rounding the update away); this keeps it exact, so the
        merged model computes what the trained QLoRA model computed.
        """
        from peft.tuners.lora import LoraLayer
        from peft.utils.integrations import dequantize_bnb_weight

        dtype = TORCH_DTYPES[self.compute_dtype]
        for parent in list(model.modules()):
            for child_name, layer in list(parent.named_children()):
                if not isinstance(layer, LoraLayer):
                    continue
                base = layer.get_base_layer()
                weight = dequantize_bnb_weight(base.weight, state=base.weight.quant_state).to(torch.float32)
                for adapter in layer.active_adapters:
                    variant = layer.lora_variant.get(adapter)
                    if variant is None:
                        weight = weight + layer.get_delta_weight(adapter).to(torch.float32)
                    else:  # DoRA rescales the merged weight per output feature
                        weight = variant.merge_safe(layer, adapter, weight)
                plain = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, dtype=dtype)
                plain.weight.data.copy_(weight)
                if base.bias is not None:
                    plain.bias.data.copy_(base.bias.data)
                setattr(parent, child_name, plain)
        plain_model = model.get_base_model()
        # transformers refuses to cast or save a model it believes is still bitsandbytes-quantised
        plain_model.config.quantization_config = None
        plain_model.is_quantized = plain_model.is_loaded_in_4bit = False
        plain_model.hf_quantizer = plain_model.quantization_method = None
        return plain_model
