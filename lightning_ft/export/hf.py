"""Hugging Face formats: the merged model (plain transformers), the adapter alone (peft), a quantised model
(bitsandbytes), each as safetensors with the tokenizer, and the way back (`load_exported`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

from lightning_ft.errors import UserError
from lightning_ft.loading import load_model, load_tokenizer
from lightning_ft.methods import METHODS, Method
from lightning_ft.methods.base import method_class

EXPORT_RECORD = "lightning_ft_export.json"  # what was exported, from what, and how it checked out
AUTO_CLASSES = {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification}


def write_merged(model: nn.Module, directory: Path, dtype: torch.dtype) -> None:
    """Plain transformers weights in `dtype`, as safetensors (save_pretrained's default), shards as it sees fit."""
    model.to(dtype).save_pretrained(directory)


def write_adapter(method: Method, model: nn.Module, directory: Path, dtype: torch.dtype | None) -> None:
    """The trained weights alone (in `dtype` when given), in the method's own format (peft's for peft methods)."""
    if dtype is not None:
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.to(dtype)
    method.save_adapter(model, directory)


def write_quantized(directory: Path, task: str, kind: str, dtype: torch.dtype) -> None:
    """Quantise the merged model already written in `directory`, in place: bitsandbytes quantises each Linear as
    transformers loads it (int8: LLM.int8 with outliers kept in 16 bits; nf4: 4-bit normal-float with
    double-quantised scales), and transformers serialises the packed weights with their quantisation config, so
    the result loads with plain `from_pretrained` wherever bitsandbytes is installed."""
    if kind == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    unquantized = directory.with_name(directory.name + ".unquantized")
    directory.rename(unquantized)
    try:
        model = AUTO_CLASSES[task].from_pretrained(unquantized, dtype=dtype, quantization_config=config)
        model.save_pretrained(directory)
        for extra in unquantized.iterdir():  # tokenizer files and the rest: everything but the weights
            if not (directory / extra.name).exists() and not extra.name.startswith("model"):
                shutil.copy2(extra, directory / extra.name)
    finally:
        shutil.rmtree(unquantized)


def method_by_name(record: dict) -> Method:
    """The method an export record names, built from its settings. A registered method by its name; any other by
    its class path, which only imports installed code (the checkpoint it was exported from named the same class),
    and only a Method subclass is built."""
    name, class_path = record["method"]["name"], record["method"].get("class_path")
    known = {cls.__name__: cls for cls in METHODS}  # records written before they kept the class path
    cls = method_class(class_path) if class_path else known.get(name)
    if cls is None:
        raise UserError(f"the export was made with {class_path or name}, which does not import here: is it installed?")
    return cls(**record["method"]["settings"])


def read_export_record(directory: Path) -> dict:
    path = Path(directory) / EXPORT_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise UserError(f"{directory}: not a lightning-ft export (no {EXPORT_RECORD})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def load_exported(directory: str | Path, base: str | None = None) -> nn.Module:
    """A model `lightning-ft export` wrote, ready for inference: merged ones through plain transformers, adapters
    on their base model (`base`, else the one the export names) through the method that trained them."""
    directory = Path(directory).expanduser()
    record = read_export_record(directory)
    task = record["task"]
    if record["format"] == "merged":
        return AUTO_CLASSES[task].from_pretrained(directory).eval()
    if record["format"] != "adapter":
        raise UserError(f"{directory}: a {record['format']} export does not load into PyTorch")
    method = method_by_name(record)
    model = load_model(  # a QLoRA adapter goes on the 4-bit base it trained with
        base or record["base_model"],
        task,
        dtype="auto",
        labels=record.get("labels"),
        num_labels=record.get("num_labels"),
        pad_token_id=load_tokenizer(str(directory)).pad_token_id,
        quantization_config=method.quantization_config(),
    )
    return method.load_adapter(model, directory, task).eval()
