"""Base model and tokenizer from a local Hugging Face directory or a hub id."""

from __future__ import annotations

import os

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lightning_ft.constants import DType, Task
from lightning_ft.errors import UserError, first_line

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_source(name_or_path: str) -> None:
    """Fail early on a local path that does not exist.

    Anything shaped like a path (absolute, relative, ~, or not exactly `org/name`) must be a directory here;
    `org/name` that is not a local directory is treated as a hub id.
    """
    if os.path.isdir(os.path.expanduser(name_or_path)):
        return
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise UserError(f"--model.model_name_or_path: no such directory: {name_or_path}")


def check_model_dir(name_or_path: str) -> None:
    """As `check_model_source`, and a local directory must hold a model (a run dir, say, holds none)."""
    check_model_source(name_or_path)
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        hint = "; a run dir? export its checkpoint and pass the export" if os.path.isdir(f"{path}/checkpoints") else ""
        raise UserError(f"--model.model_name_or_path: {name_or_path} holds no model (no config.json){hint}")


def _from_pretrained(loader, name_or_path: str, **kwargs):
    check_model_source(name_or_path)
    try:
        return loader.from_pretrained(os.path.expanduser(name_or_path), **kwargs)
    except OSError as err:  # missing files, unreachable hub, offline mode
        raise UserError(f"cannot load '{name_or_path}': {first_line(err)}") from err
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise UserError(
            f"'{name_or_path}' needs its own Python code to load; it runs only with --model.trust_remote_code true "
            "(only for a source you trust)"
        ) from err


def context_length(name_or_path: str, trust_remote_code: bool = False) -> int | None:
    """The positions the model was trained on (its config's max_position_embeddings), when it says; None when the
    config does not read (loading the model then says why)."""
    try:
        config = _from_pretrained(AutoConfig, name_or_path, trust_remote_code=trust_remote_code)
    except (UserError, ValueError):
        return None
    return getattr(config, "max_position_embeddings", None)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer, with a pad token (the EOS token when the tokenizer defines none, as for Llama)."""
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer of '{name_or_path}' has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    task: Task,
    *,
    dtype: DType = "float32",
    labels: list[str] | None = None,
    num_labels: int | None = None,
    pad_token_id: int | None = None,
    quantization_config=None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load the base model for `task`; a classifier gets a fresh head with `labels` (or `num_labels`)."""
    kwargs = {
        "dtype": TORCH_DTYPES.get(dtype, "auto"),
        "trust_remote_code": trust_remote_code,
        "quantization_config": quantization_config,
    }
    if task == "causal_lm":
        return _from_pretrained(AutoModelForCausalLM, name_or_path, **kwargs)
    if labels:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    elif num_labels:
        kwargs["num_labels"] = num_labels
    else:
        raise UserError("--model.task sequence_classification needs --model.labels or --model.num_labels")
    model = _from_pretrained(AutoModelForSequenceClassification, name_or_path, **kwargs)
    if model.config.pad_token_id is None:
        # Decoder classifiers pool the last non-pad token and need to know which id pads.
        model.config.pad_token_id = pad_token_id
    return model
