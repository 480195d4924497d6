"""The data pipeline that `fit` and `lightning-ft data` share.

sources -> records -> (carve splits) -> quality rules per split -> train/val/test leak removal -> rebalance
-> tokens (format + truncation/drop + label check) -> an on-disk cache keyed by everything that shaped it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from lightning_ft.data.formats import DataFormat, EncodeContext, TokenRules
from lightning_ft.data.quality import QualityReport, QualityRules, clean, label_distribution, rebalance, remove_leaks
from lightning_ft.data.sources import NumberedRecord, Source, fingerprint, read_records
from lightning_ft.data.splits import SplitSpec, carve
from lightning_ft.errors import UserError
from lightning_ft.files import staged_folder
from lightning_ft.interrupts import quiet_workers_on_ctrl_c

SPLITS = ("train", "val", "test")
TOKEN_STATUSES = ("kept", "truncated", "too_short", "overlong_dropped", "no_label_tokens", "identical_pair")
PIPELINE_VERSION = 7  # bump when a change here alters what a cached dataset would hold


@dataclass(frozen=True)
class PipelineSettings:
    """Everything that shapes the tokenized data: the pipeline's one input, and its cache key (every field, the
    sources by their bytes and the tokenizer by its vocabulary). How the data is batched is not here: batching
    facts are computed after the cache, for each run's own batch size."""

    format: DataFormat
    sources: dict[str, Source | None]
    context: EncodeContext  # the tokenizer, max_length, labels, train_on_inputs
    tokens: TokenRules
    quality: QualityRules
    split: SplitSpec
    seed: int
    encoding_errors: str

    def cache_key(self) -> str:
        ctx = self.context
        parts = {
            "version": PIPELINE_VERSION,
            "format": repr(self.format),
            "sources": {name: fingerprint(source) for name, source in self.sources.items() if source},
            "tokenizer": tokenizer_fingerprint(ctx.tokenizer),
            "labels": [ctx.labels, ctx.num_labels, ctx.train_on_inputs, ctx.max_length],
            "tokens": asdict(self.tokens),
            "quality": asdict(self.quality),
            "split": asdict(self.split),
            "seed": self.seed,
            "encoding_errors": self.encoding_errors,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:24]

    def origin(self, name: str) -> str:
        """Where a split's records come from, as reports and errors name it (a carved split: the training data)."""
        name = name if self.sources.get(name) else "train"
        source = self.sources[name]
        return source if isinstance(source, str) else f"--data.{name}_path"


def build(settings: PipelineSettings, num_proc: int | None) -> tuple[datasets.DatasetDict, dict]:
    """The whole pipeline: (tokenized splits, the data's report). The report keeps, per split, what a user should
    be warned about (without the file's path, which the cache key leaves out): the DataModule warns at every run,
    from the cache too."""
    records = read_splits(settings)
    cleaned, quality = apply_quality(records, settings)
    warnings = data_warnings(cleaned, quality, settings)
    tokenized, counts = tokenize(cleaned, settings, num_proc)
    for name, count in counts.items():
        if count["no_label_tokens"]:
            warnings[name].append(
                f"dropped {count['no_label_tokens']} examples with no label token left "
                f"(the prompt fills max_length={settings.tokens.max_length}, or no response)"
            )
    return tokenized, build_report(records, quality, counts, tokenized, warnings, settings.format)


def tokenizer_fingerprint(tokenizer) -> str:
    try:
        vocabulary = tokenizer.backend_tokenizer.to_str()
    except AttributeError:  # a tokenizer without a Rust backend
        vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([tokenizer.chat_template, tokenizer.special_tokens_map], default=str)
    return hashlib.sha256((vocabulary + extra).encode()).hexdigest()


def read_splits(settings: PipelineSettings) -> dict[str, list[NumberedRecord]]:
    """Records per split, from their own files or carved out of the training file."""
    fmt, sources = settings.format, settings.sources
    field_names = {
        "label_field": getattr(fmt, "label_field", "label"),
        "text_field": getattr(fmt, "text_field", "text"),
    }
    records = {}
    for name in SPLITS:
        if sources.get(name):
            flag = f"--data.{name}_path"
            records[name] = read_records(sources[name], flag, encoding_errors=settings.encoding_errors, **field_names)
    if settings.split.active():
        taken = [name for name in ("val", "test") if name in records]
        if taken:
            raise UserError(
                f"--data.split carves val/test from the training file; drop --data.{taken[0]}_path or the split"
            )
        records = carve(records["train"], settings.split, settings.seed)
    return records


def apply_quality(
    records: dict[str, list[NumberedRecord]], settings: PipelineSettings
) -> tuple[dict[str, list[NumberedRecord]], dict[str, QualityReport]]:
    """Clean every split, then remove train records leaked into val/test, then rebalance labels of train."""
    fmt, rules, seed = settings.format, settings.quality, settings.seed
    reports = {name: QualityReport() for name in records}
    # Of fields a record needs only one of (chat: messages or conversations), require those the data has.
    present = {f for f in fmt.either_fields() if any(f in r for _, r in next(iter(records.values())))}
    alternatives = set(fmt.either_fields()) - present if present else set()
    fields = [f for f in fmt.text_fields() if f not in alternatives]
    required = [f for f in fmt.required_fields() if f not in alternatives]
    cleaned = {
        name: clean(
            split,
            fields,
            rules,
            reports[name],
            source=settings.origin(name),
            key_fields=fmt.key_fields(),
            required=required,
            keep_ends=fmt.joined_fields(),
        )
        for name, split in records.items()
    }
    others = [cleaned[name] for name in ("val", "test") if name in cleaned]
    cleaned["train"] = remove_leaks(
        cleaned["train"], others, fields, rules, reports["train"], key_fields=fmt.key_fields()
    )
    label_field = getattr(fmt, "label_field", None)
    if label_field and rules.rebalance != "none":
        cleaned["train"] = rebalance(cleaned["train"], label_field, rules.rebalance, seed, reports["train"])
    if not cleaned["train"]:
        raise UserError(
            f"{settings.origin('train')}: no training records left after the quality rules "
            f"({json.dumps(reports['train'].dropped)})"
        )
    return cleaned, reports


def data_warnings(
    cleaned: dict[str, list[NumberedRecord]], quality: dict[str, QualityReport], settings: PipelineSettings
) -> dict[str, list[str]]:
    """What a user should know about data that is valid, per split: PII kept in the text, eval labels training never
    shows."""
    warnings, fmt = {name: [] for name in cleaned}, settings.format
    for name, report in quality.items():
        if report.pii_kept:
            found = ", ".join(f"{count} {kind}" for kind, count in sorted(report.pii.items()))
            kept = f"PII found and kept in the text ({found}); --data.quality.scrub_pii true replaces it"
            warnings[name].append(kept)
    label_field = getattr(fmt, "label_field", None)
    if label_field:
        seen = {str(record.get(label_field)) for _, record in cleaned["train"]}
        for name in ("val", "test"):
            unseen = sorted({str(record.get(label_field)) for _, record in cleaned.get(name, [])} - seen)
            if unseen:
                warnings[name].append(
                    f"label {', '.join(map(repr, unseen))} never occurs in the training data "
                    "(the model cannot learn it; its examples can only be scored wrong)"
                )
    return warnings


def tokenize(
    records: dict[str, list[NumberedRecord]], settings: PipelineSettings, num_proc: int | None
) -> tuple[datasets.DatasetDict, dict[str, dict[str, int]]]:
    """Encode every split with `datasets.map` (several processes for large data); count what the token rules did."""
    fmt, ctx, rules = settings.format, settings.context, settings.tokens
    result, counts = {}, {}
    for name, split in records.items():

        def encode(row: dict, split=split, origin=settings.origin(name), held_out=name != "train") -> dict:
            def encode_record(index: int) -> dict:  # an error names the line of the record it is about
                number, record = split[index]
                try:
                    return fmt.encode(record, ctx)
                except UserError as err:
                    raise UserError(f"{origin}:{number}: {err}") from err

            line, record = split[row["index"]]
            example = fmt.encode_in(encode_record, row["index"])
            try:
                example, status = fmt.finish(example, rules)
                # Held-out examples keep their prompt and reference for generation metrics.
                generation = fmt.generation_example(record, ctx.tokenizer) if held_out else None
            except UserError as err:
                raise UserError(f"{origin}:{line}: {err}") from err
            example = example or fmt.empty_example()
            if held_out:  # every row has the columns (datasets needs one schema); "" means no generation example
                example |= generation or {"prompt": "", "prompt_ids": [], "reference": ""}
            terms = fmt.loss_terms(example)
            return {**example, "length": len(example["input_ids"]), "terms": terms, "status": status, "line": line}

        processes = num_proc if num_proc is not None else (os.cpu_count() if len(split) > 20_000 else None)
        # new_fingerprint: our own cache keys the result, and hashing the closure (records, tokenizer) is slow.
        with quiet_workers_on_ctrl_c():
            encoded = datasets.Dataset.from_dict({"index": list(range(len(split)))}).map(
                encode,
                remove_columns=["index"],
                num_proc=processes,
                desc=f"tokenizing {name}",
                new_fingerprint=uuid.uuid4().hex,
            )
        statuses = list(encoded["status"])
        counts[name] = {s: statuses.count(s) for s in TOKEN_STATUSES}
        with no_progress_bars():
            result[name] = encoded.filter(lambda status: status in ("kept", "truncated"), input_columns="status")
        if len(result[name]) == 0:
            raise UserError(
                f"{settings.origin(name)}: no {name} examples left after tokenization "
                f"({json.dumps(counts[name])}, max_length={rules.max_length})"
            )
    return datasets.DatasetDict(result), counts


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Without datasets' progress bars, for steps that take no time to watch (filtering, saving): on the console they
    were two bars per split of every fit."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def length_summary(lengths: list[int]) -> dict[str, float]:
    ordered = sorted(lengths)

    def percentile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "examples": len(ordered),
        "tokens": sum(ordered),
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": percentile(0.5),
        "p90": percentile(0.9),
        "p99": percentile(0.99),
        "max": ordered[-1],
    }


def build_report(records, quality, token_counts, tokenized, warnings, fmt: DataFormat) -> dict:
    """What the data says about itself, per split: rows in/out per rule, labels, lengths (it is cached with the
    data, so nothing here depends on where the files are or how a run batches them)."""
    report = {}
    label_field = getattr(fmt, "label_field", None)
    for name in tokenized:
        entry = {
            "records": len(records[name]),
            "quality": quality[name].to_dict(),
            "tokens": token_counts[name],
            "examples": len(tokenized[name]),
            "lengths": length_summary(list(tokenized[name]["length"])),
            "warnings": warnings[name],
        }
        if label_field:
            entry["labels"] = label_distribution(records[name], label_field)
        report[name] = entry
    return report


class DatasetCache:
    """Tokenized splits and their report on disk, under a key; written whole or not at all."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.path = Path(root).expanduser() / key

    def load(self) -> tuple[datasets.DatasetDict, dict] | None:
        if not (self.path / "report.json").is_file():
            return None
        return datasets.load_from_disk(str(self.path / "data")), json.loads((self.path / "report.json").read_text())

    def save(self, data: datasets.DatasetDict, report: dict) -> None:
        with staged_folder(self.path) as staging:  # a reader sees the old entry, or none, or the whole new one
            with no_progress_bars():
                data.save_to_disk(str(staging / "data"))
            (staging / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
