"""The model versions one server answers with: what each `--model` names, read without weights (the HTTP processes
need only tokenizers and prompt rendering) and loaded once per inference worker.

A version is an export folder (merged or adapter; `lightning-ft export`) or a `fit` checkpoint. Adapter exports of
one base share it: peft loads each adapter beside the others into one model, and a request picks its adapter by
version name.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from lightning_ft.checkpoints import load_checkpoint_file
from lightning_ft.data.profile import PROFILE_FILE
from lightning_ft.data.served import DATAMODULE_STATE, TrainedPrompts
from lightning_ft.errors import UserError
from lightning_ft.export.hf import AUTO_CLASSES, EXPORT_RECORD, read_export_record
from lightning_ft.loading import load_model, load_tokenizer


@dataclass
class Version:
    """One servable model: where it is, what it is, and how its prompts are rendered."""

    name: str
    source: Path
    kind: str  # "merged", "adapter" or "checkpoint"
    task: str
    base: str | None  # an adapter's base model
    record: dict  # the export record, or the checkpoint's hyperparameters
    prompts: TrainedPrompts | None
    tokenizer: object = field(repr=False, default=None)
    profile: dict | None = field(repr=False, default=None)  # the training prompts' (data/profile.py), for drift

    @property
    def labels(self) -> list[str] | None:
        return self.record.get("labels")


def read_version(name: str, source: str | Path, given: str | None = None) -> Version:
    """The version `source` holds (an export folder or a .ckpt file), without its weights; `given`: what the user
    wrote, for messages."""
    path = Path(source).expanduser().resolve()
    flag = f"--model {given or f'{name}={source}'}"
    if path.is_dir() and (path / EXPORT_RECORD).is_file():
        record = read_export_record(path)
        if record["format"] not in ("merged", "adapter"):
            raise UserError(f"{flag}: a {record['format']} export does not serve (export hf)")
        settings, tokenizer_source = record.get("prompts"), str(path)
        kind, task, base = record["format"], record["task"], record.get("base_model")
        profile = json.loads((path / PROFILE_FILE).read_text()) if (path / PROFILE_FILE).is_file() else None
    elif path.is_file() and path.suffix == ".ckpt":
        saved = load_checkpoint_file(path, mmap=True)
        record = dict(saved.get("hyper_parameters") or {})
        if "model_name_or_path" not in record:
            raise UserError(f"{flag}: not a lightning-ft checkpoint")
        settings = (saved.get(DATAMODULE_STATE) or {}).get("prompts")
        profile = (saved.get(DATAMODULE_STATE) or {}).get("inputs")
        kind, task, base, tokenizer_source = (
            "checkpoint",
            record.get("task", "causal_lm"),
            None,
            record["model_name_or_path"],
        )
    elif path.is_dir() and (path / "config.json").is_file():
        raise UserError(f"{flag}: a plain model folder records no training prompts: serve its export")
    else:
        raise UserError(f"{flag}: neither an export folder ({EXPORT_RECORD}) nor a .ckpt file")
    if settings is None:
        warnings.warn(
            f"{path} records no training prompt format (made before lightning_ft recorded it): prompts are served "
            "as raw text, which may not be what the model was trained on",
            stacklevel=2,
        )
    prompts = TrainedPrompts(settings) if settings else None
    return Version(name, path, kind, task, base, record, prompts, load_tokenizer(tokenizer_source), profile)


def stop_token_ids(version: Version, model: nn.Module) -> set[int]:
    """EOS (the tokenizer's and the generation config's) and, for chat-trained models, the token that ends an
    assistant turn in the template (a chat model stops there, as its training labels did)."""
    tokenizer = version.tokenizer
    ids = {tokenizer.eos_token_id} - {None}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured]) - {None}
    if version.prompts is not None:
        ids |= version.prompts.turn_end_ids(tokenizer)
    return ids


def load_versions(versions: list[Version]) -> dict[str, nn.Module]:
    """Each version's model, in eval mode; adapter exports of one base share one model (see `Switched`)."""
    models: dict[str, nn.Module] = {}
    shared: dict[str, nn.Module] = {}  # base -> the peft model holding that base's adapters
    for version in versions:
        if version.kind == "merged":
            models[version.name] = AUTO_CLASSES[version.task].from_pretrained(version.source).eval()
        elif version.kind == "checkpoint":
            models[version.name] = checkpoint_model(version.source)
        else:
            models[version.name] = Switched(adapter_model(version, shared), version.name)
    return models


def checkpoint_model(path: Path) -> nn.Module:
    from lightning_ft.trained import load_trained

    module = load_trained(path)
    # A method that cannot merge (prefix tuning, bottleneck adapters) runs with its adapter in place.
    return (module.method.merge(module.model) if module.method.can_merge else module.model).eval()


def adapter_model(version: Version, shared: dict[str, nn.Module]) -> nn.Module:
    from peft import PeftModel

    if version.record["method"].get("adapter_library") != "peft":
        from lightning_ft.export.hf import load_exported

        return load_exported(version.source)
    base = version.base
    if base in shared:
        shared[base].load_adapter(str(version.source), adapter_name=version.name)
    else:
        model = load_model(
            base, version.task, dtype="auto", labels=version.labels, pad_token_id=version.tokenizer.pad_token_id
        )
        shared[base] = PeftModel.from_pretrained(model, str(version.source), adapter_name=version.name).eval()
    return shared[base]


class Switched:
    """A version's view of a model holding several adapters: each call first makes its adapter the active one.
    Calls are sequential (one inference worker steps one version at a time), so switching is safe."""

    def __init__(self, model: nn.Module, adapter: str) -> None:
        self.model, self.adapter = model, adapter

    def __call__(self, *args, **kwargs):
        if hasattr(self.model, "set_adapter"):
            self.model.set_adapter(self.adapter)
        return self.model(*args, **kwargs)

    def eval(self) -> Switched:  # the model's own would return the model, which would forget the adapter
        self.model.eval()
        return self

    def to(self, *args, **kwargs) -> Switched:
        self.model.to(*args, **kwargs)
        return self

    def __getattr__(self, name: str):
        return getattr(self.model, name)
