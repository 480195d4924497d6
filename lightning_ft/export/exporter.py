"""Exporting a `fit` checkpoint as something that runs elsewhere (`lightning-ft export`).

Writes into a temp folder beside the output and renames it into place only once everything is written and the
export computes what the trained model computed (check.py): an interrupted or failed export leaves it as it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig

from lightning_ft.checkpoints import load_checkpoint_file
from lightning_ft.data.profile import PROFILE_FILE
from lightning_ft.data.served import DATAMODULE_STATE
from lightning_ft.errors import UserError
from lightning_ft.export.card import model_card
from lightning_ft.export.check import PROBE_SHAPE, TOLERANCE, compare, logits, probe_inputs
from lightning_ft.export.hf import (
    AUTO_CLASSES,
    EXPORT_RECORD,
    load_exported,
    write_adapter,
    write_merged,
    write_quantized,
)
from lightning_ft.export.onnx import check_onnx, quantize_onnx, require_onnx, run_onnx, write_onnx
from lightning_ft.export.registry import REGISTRY_FILE, find_version, register
from lightning_ft.files import staged_folder, write_json_atomically
from lightning_ft.loading import TORCH_DTYPES, load_tokenizer
from lightning_ft.tracking.record import RECORD_FILE, package_versions, read_run_record
from lightning_ft.trained import load_trained

ONNX_CHECK_SHAPE = (3, 11)  # another shape than the traced probe's: the graph must not have baked one in


@dataclass(frozen=True)
class ExportRequest:
    """What to export and how (the flags of `lightning-ft export`, which say what each means)."""

    ckpt: str
    output: str
    merge: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    quantize: Literal["int8", "nf4"] | None = None
    format: Literal["hf", "onnx"] = "hf"
    base: str | None = None
    overwrite: bool = False
    version: str | None = None
    registry: str | None = None


def export(args: ExportRequest) -> None:
    """Export the checkpoint `args.ckpt` into the folder `args.output` (see the module docstring); prints what it
    wrote and how it compares with the trained model."""
    output, checkpoint = Path(args.output).expanduser().resolve(), Path(args.ckpt).expanduser().resolve()
    check_flags(args, output, checkpoint)
    module = load_trained(checkpoint, base=args.base)
    if not module.method.saves_full_model and module.hparams.dtype is not None:
        # The frozen base was held in another dtype to train (bf16 rounds it): export base + adapter from the base's
        # own files instead, read in fp32 (which holds any published dtype exactly), the trained weights in fp32.
        module = load_trained(checkpoint, base=args.base, dtype=None)
    method, task, source = module.method, module.hparams.task, module.hparams.model_name_or_path
    reference = reference_name(module, source)
    whole = args.merge or method.saves_full_model or args.format == "onnx"
    if module.hparams.get("init_from") and not whole:
        raise UserError(
            f"{checkpoint} adapts the model of --model.init_from {module.hparams.init_from}, not the base a plain "
            "adapter would name: add --merge"
        )
    if args.quantize and not whole:
        raise UserError("--quantize quantises the merged weights: add --merge (an adapter alone stays as trained)")
    dtype = TORCH_DTYPES[args.dtype or "float32"] if args.dtype or args.format == "onnx" else base_dtype(source)
    vocab_size = module.model.config.vocab_size
    probes = [probe_inputs(vocab_size), probe_inputs(vocab_size, ONNX_CHECK_SHAPE, seed=1)]
    references = [logits(module.model, task, probe) for probe in probes]
    tolerance = max(TOLERANCE[dtype], *(TOLERANCE.get(d, 0.0) for d in computed_dtypes(module)))
    try:
        model = method.merge(module.model) if whole else module.model
    except UserError as err:
        raise UserError(f"{err}{' (--format onnx exports merged weights)' if args.format == 'onnx' else ''}") from None

    saved = load_checkpoint_file(checkpoint, mmap=True)
    fmt = "onnx" if args.format == "onnx" else "merged" if whole else "adapter"
    record = export_record(args, output, checkpoint, saved, source, task, method, fmt, dtype)
    with staged_folder(output) as staging:
        load_tokenizer(source).save_pretrained(staging)
        write_json_atomically(staging / EXPORT_RECORD, record)  # load_exported reads it
        if fmt == "onnx":
            check = write_checked_onnx(model, task, staging, probes, args.quantize)
            check |= compare(references[1], run_onnx(staging, probes[1]))
            check_within(check, tolerance, strict=not args.quantize)
            model.config.save_pretrained(staging)
        elif fmt == "merged":
            write_merged(model, staging, dtype)
            if args.quantize:
                write_quantized(staging, task, args.quantize, dtype)
        else:
            write_adapter(method, model, staging, TORCH_DTYPES.get(args.dtype))
        del model, module  # the reload below needs the memory
        if fmt != "onnx":
            check = compare(references[0], logits(load_exported(staging, base=source), task, probes[0]))
            check_within(check, tolerance, strict=not args.quantize)
        record["check"] = {**check, "reference": reference, "tolerance": tolerance, "probe_shape": list(PROBE_SHAPE)}
        write_json_atomically(staging / EXPORT_RECORD, record)
        run = run_record(checkpoint)
        if run:
            write_json_atomically(staging / "training_run.json", run)
        inputs = (saved.get(DATAMODULE_STATE) or {}).get("inputs")
        if inputs:  # what serve compares live inputs with (serving/drift.py)
            write_json_atomically(staging / PROFILE_FILE, inputs)
        card = model_card(record, saved.get("hyper_parameters") or {}, run)
        (staging / "README.md").write_text(card, encoding="utf-8")
        make_readable(staging)
    if args.version:
        registry = registry_path(args, output)
        register(registry, record, run, output, replace=args.overwrite)
        print(f"registered {args.version} in {registry}")
    quantized = f", {args.quantize}" if args.quantize else ""
    print(
        f"exported {fmt} ({record['dtype']}{quantized}) to {output}; against {reference}: "
        f"max |logit diff| {check['max_abs_diff']:.2e}, top-1 agreement {check['top1_agreement']:.1%}"
    )


def reference_name(module, source: str) -> str:
    """What the export is checked against, in words (the printed line and the export record say it)."""
    if module.method.saves_full_model:
        return "the trained model"
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in module.model.parameters() if not p.requires_grad})
    return f"base model {source} ({'/'.join(dtypes)}) + the trained weights"


def check_flags(args, output: Path, checkpoint: Path) -> None:
    """Refuse what cannot work before anything loads or is written."""
    if args.format == "onnx":
        require_onnx()
    if args.format == "onnx" and args.quantize == "nf4":
        raise UserError("--format onnx --quantize nf4: ONNX Runtime has no NF4; use --quantize int8")
    if args.format == "onnx" and args.dtype not in (None, "float32"):
        raise UserError(f"--format onnx --dtype {args.dtype}: the ONNX export is float32 (quantise with int8)")
    if output.is_file() and not args.overwrite:
        raise UserError(f"--output {output} is a file: add --overwrite to replace it")
    if output.is_dir() and any(output.iterdir()) and not args.overwrite:
        raise UserError(f"--output {output} is not empty: add --overwrite to replace it")
    if args.overwrite and (checkpoint.is_relative_to(output) or (args.base and Path(args.base).resolve() == output)):
        raise UserError(f"--output {output} --overwrite would delete the checkpoint or base model it exports")
    if args.registry and not args.version:
        raise UserError("--registry records a --version: give one")
    if args.version is not None:
        if not args.version.strip() or any(c.isspace() or c in "=,/" for c in args.version):
            raise UserError(f"--version {args.version!r}: a tag without spaces, '=', ',' or '/' (e.g. v1.1)")
        registry = registry_path(args, output)
        earlier = find_version(registry, args.version)
        if earlier and earlier["path"] != str(output) and not args.overwrite:
            raise UserError(
                f"{registry}: version {args.version} is already {earlier['path']}: choose another --version"
            )


def registry_path(args, output: Path) -> Path:
    return Path(args.registry).expanduser().resolve() if args.registry else output.parent / REGISTRY_FILE


def base_dtype(source: str) -> torch.dtype:
    """The dtype the base model was published in (its config's), float32 when it names none."""
    dtype = getattr(AutoConfig.from_pretrained(source), "dtype", None)
    return TORCH_DTYPES.get(str(dtype).removeprefix("torch."), torch.float32) if dtype else torch.float32


def computed_dtypes(module) -> set[torch.dtype]:
    """The dtypes the trained model computed in: its floating weights', and a QLoRA base's compute dtype."""
    dtypes = {p.dtype for p in module.model.parameters() if p.is_floating_point()}
    return dtypes | {TORCH_DTYPES[name] for name in module.method.compute_dtypes()}


def check_within(check: dict, tolerance: float, strict: bool) -> None:
    if strict and not check["relative_diff"] <= tolerance:  # `not <=`: NaN fails too
        raise UserError(
            f"the export computes other logits than the trained model: max difference {check['relative_diff']:.2e} "
            f"of their scale (tolerance {tolerance:.0e}); nothing was written"
        )


def write_checked_onnx(model, task: str, directory: Path, probes: list[dict], quantize: str | None) -> dict:
    """model.onnx traced on the first probe, and how onnxruntime's logits compare with the exported PyTorch
    model's (fp32) on the second, another shape; then int8 if asked, compared again."""
    write_onnx(model, task, directory, probes[0])
    exported = logits(model, task, probes[1])
    check = {"onnx_vs_pytorch": check_onnx(directory, exported, probes[1], strict=True)["relative_diff"]}
    if quantize:
        quantize_onnx(directory)
        check["int8_vs_pytorch"] = check_onnx(directory, exported, probes[1], strict=False)["relative_diff"]
    return check


def export_record(args, output: Path, checkpoint: Path, saved: dict, source: str, task, method, fmt, dtype) -> dict:
    hparams = saved.get("hyper_parameters") or {}
    versions = package_versions()
    if fmt == "onnx":
        versions |= {name: metadata.version(name) for name in ("onnx", "onnxruntime")}
    return {
        "name": output.name,
        "format": fmt,
        "task": task,
        "base_model": source,
        "method": {
            "name": type(method).__name__,
            "class_path": method.class_path(),
            "settings": dataclasses.asdict(method),
            "adapter_library": method.adapter_library,  # the model card says these (it has only the record)
            "adapter_loading_code": method.adapter_loading_code(AUTO_CLASSES[task].__name__, source),
        },
        "labels": hparams.get("labels"),
        "num_labels": hparams.get("num_labels"),
        "dtype": str(dtype).removeprefix("torch."),
        "quantize": args.quantize,
        "checkpoint": str(checkpoint),
        "checkpoint_step": saved.get("global_step"),
        "version": args.version,
        # how training rendered prompts (data/served.py): serve renders requests the same
        "prompts": (saved.get(DATAMODULE_STATE) or {}).get("prompts"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions,
    }


def run_record(checkpoint: Path) -> dict | None:
    """The run record of the run the checkpoint came from: run dir/checkpoints/X.ckpt, or run dir/hpc_ckpt_N.ckpt."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / RECORD_FILE).is_file():
            return read_run_record(folder)
    return None


def make_readable(folder: Path) -> None:
    """What is shipped is readable by all (save_pretrained writes its weights with mode 600)."""
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
