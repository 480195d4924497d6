"""A fine-tuned model back from a `lightning-ft fit` checkpoint, for the commands that take one (eval,
bench-inference, export, prune).

One clear error for each way this goes wrong: the file is missing, cut short or unsafe (checkpoints.py), it is not
a lightning-ft checkpoint, its base model is no longer where training read it, or the base found there is another
model than the one it was trained on (FineTuneModule.on_load_checkpoint compares their configs).
"""

from __future__ import annotations

from pathlib import Path

from lightning_ft.checkpoints import load_checkpoint_file
from lightning_ft.constants import DType
from lightning_ft.errors import UserError
from lightning_ft.loading import check_model_source, load_model, load_tokenizer
from lightning_ft.module import FineTuneModule


def load_trained(checkpoint: str | Path, base: str | None = None, **overrides) -> FineTuneModule:
    """The module of a one-file checkpoint on the CPU, its base model read from `base` when given (the base has
    moved, or lives elsewhere on this machine), else from where training read it; `overrides` replace
    hyperparameters (e.g. dtype)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a sharded checkpoint folder: make it one file with `lightning-ft consolidate`")
    settings = load_checkpoint_file(path, mmap=True).get("hyper_parameters") or {}
    if "model_name_or_path" not in settings:
        raise UserError(f"{path}: not a lightning-ft checkpoint (no model_name_or_path in its hyperparameters)")
    source = base or settings["model_name_or_path"]
    try:
        check_model_source(source)
    except UserError:
        flag = "--base" if base else "the checkpoint's base model"
        raise UserError(f"{flag} {source}: no such directory (moved? pass --base DIR)") from None
    # A trained model is used without its objective (a teacher's directory, say, need not be there any more).
    settings = {"model_name_or_path": source, "objective": None, **overrides}
    return FineTuneModule.load_from_checkpoint(path, map_location="cpu", **settings)


def load_causal_lm(model: str, dtype: DType = "auto"):
    """(model, tokenizer) for inference from `--model`: a Hugging Face model dir, or a `lightning-ft fit` checkpoint
    (its base model plus adapter, merged into plain weights when the method can merge, else with the adapter in
    place)."""
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return load_model(str(path), "causal_lm", dtype=dtype).eval(), load_tokenizer(str(path))
    if not (path.is_file() and path.suffix == ".ckpt"):
        raise UserError(f"--model: {model} is neither a model directory (with config.json) nor a .ckpt file")
    module = load_trained(path)
    hparams = module.hparams
    if hparams.task != "causal_lm":
        raise UserError(f"--model: {path} holds a {hparams.task} model; this needs a causal LM")
    tokenizer = load_tokenizer(hparams.model_name_or_path, hparams.trust_remote_code)
    # A method that cannot merge (prefix tuning, bottleneck adapters) runs with its adapter in place.
    merged = module.method.merge(module.model) if module.method.can_merge else module.model
    return merged.eval(), tokenizer
