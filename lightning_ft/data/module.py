"""FineTuneDataModule: data files -> cleaned, split, tokenized (and cached) examples -> batches."""

from __future__ import annotations

import os
from functools import cached_property, partial
from typing import Literal

import datasets
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lightning_ft.data.batching import (
    PackedDataset,
    ResumableLoader,
    StepBatchSampler,
    WithIndex,
    WithStepTerms,
    collate,
    length_grouped_order,
    pack,
    padding_waste,
    rows_per_batch,
)
from lightning_ft.data.formats import DataFormat, EncodeContext, TokenRules, resolve_format
from lightning_ft.data.pipeline import (
    DatasetCache,
    PipelineSettings,
    build,
)
from lightning_ft.data.profile import training_profile
from lightning_ft.data.quality import QualityRules
from lightning_ft.data.served import prompt_settings
from lightning_ft.data.sources import Source, check_data_source
from lightning_ft.data.splits import SplitSpec
from lightning_ft.errors import UserError
from lightning_ft.loading import load_tokenizer

Batching = Literal["auto", "pad", "group_by_length", "pack"]
DEFAULT_CACHE = os.environ.get("LIGHTNING_FT_CACHE", "~/.cache/lightning_ft/data")


class FineTuneDataModule(LightningDataModule):
    """Reads train / val / test data in one format, cleans and tokenizes it once (cached), serves batches.

    Args:
        format: "text", "instruction", "chat", "classification" or "preference", or a format object with its own
            settings (class_path + init_args: field names, prompt or chat template).
        train_path / val_path / test_path: a file (.jsonl, .json, .csv, .tsv, .parquet, .txt; .gz/.bz2 too), a
            folder from datasets' save_to_disk, a hub dataset name (online only), or {label: file} (one label
            per file). val and test are optional; `split` can carve them out of the training file instead.
        tokenizer: tokenizer directory or hub id (set from --model.model_name_or_path).
        labels / num_labels: classes for classification (set from --model.labels / --model.num_labels).
        max_length: tokens per sequence (a preference pair has two); a packed row holds as many as an example.
        min_length: examples with fewer tokens are dropped (counted), e.g. to skip near-empty documents.
        overlong: "truncate" examples over max_length, or "drop" them; either way they are counted.
        truncation_side: "right" keeps the beginning, "left" keeps the end.
        train_on_inputs: also put loss on prompt / user tokens (default: responses only).
        quality: the data-quality rules (each switchable; see QualityRules).
        split: carve val/test (holdout, stratified, k-fold, time-based) from the training file.
        batching: "pad" (shuffled, padded to the batch's longest), "group_by_length" (similar lengths batched
            together), "pack" (several examples per row, attention kept within each), or "auto" (pack causal-LM
            data, pad classification data).
        pad_to_multiple_of: round padded lengths up (8 suits GPU tensor cores).
        batch_size: examples per step per device; when packing, as many rows as hold that many on average.
        eval_batch_size: examples per validation/test step (default: batch_size).
        num_workers: DataLoader worker processes.
        num_proc: tokenization processes (default: all cores above 20,000 records, else one).
        encoding_errors: "strict" stops at bytes that are not UTF-8; "replace" substitutes U+FFFD and warns.
        cache_dir: where tokenized datasets are kept, keyed by a fingerprint of data, tokenizer and settings.
        seed: seed of splits, packing and shuffling; the order of the n-th pass depends only on (seed, n).
    """

    def __init__(
        self,
        format: str | DataFormat = "instruction",
        train_path: Source | None = None,
        val_path: Source | None = None,
        test_path: Source | None = None,
        tokenizer: str | None = None,
        labels: list[str] | None = None,
        num_labels: int | None = None,
        max_length: int = 2048,
        min_length: int = 0,
        overlong: Literal["truncate", "drop"] = "truncate",
        truncation_side: Literal["right", "left"] = "right",
        train_on_inputs: bool = False,
        quality: QualityRules = QualityRules(),
        split: SplitSpec = SplitSpec(),
        batching: Batching = "auto",
        pad_to_multiple_of: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_proc: int | None = None,
        encoding_errors: Literal["strict", "replace"] = "strict",
        cache_dir: str = DEFAULT_CACHE,
        seed: int = 42,
    ) -> None:
        super().__init__()
        least = {"batch_size": (batch_size, 1), "eval_batch_size": (eval_batch_size, 1), "max_length": (max_length, 1)}
        least |= {"num_workers": (num_workers, 0), "min_length": (min_length, 0), "num_proc": (num_proc, 1)}
        for name, (value, minimum) in least.items():
            if value is not None and value < minimum:
                raise UserError(f"--data.{name} must be at least {minimum}, got {value}")
        self.format = resolve_format(format)
        self.sources = {"train": train_path, "val": val_path, "test": test_path}
        for name, source in self.sources.items():
            if source:
                check_data_source(source, f"--data.{name}_path")  # fail before the model loads, not after
        self.tokenizer_name = tokenizer
        self.labels = labels
        self.num_labels = num_labels
        self.token_rules = TokenRules(max_length, overlong, truncation_side, min_length)
        self.train_on_inputs = train_on_inputs
        self.quality = quality
        self.split = split
        self.batching = self.resolve_batching(batching)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc
        self.encoding_errors = encoding_errors
        self.cache_dir = cache_dir
        self.seed = seed
        self.tokenizer = None
        self.datasets = None
        self.report: dict | None = None
        self.input_profile: dict | None = None  # built on the first checkpoint
        self.train_sampler: StepBatchSampler | None = None

    @property
    def validates(self) -> bool:
        """Whether a fit on this data has validation data: a val file, or a split carved from the training file.
        Known before any file is read (the checkpoint callback's monitor depends on it)."""
        return bool(self.sources["val"]) or self.split.carves_val

    def resolve_batching(self, batching: str) -> str:
        """ "auto" packs causal-LM data and pads classification data (BENCHMARKS.md has the measurements).

        Packing leaves ~3.5% padding and trains as fast as length grouping (2.0x plain padding on CPU; on GPU it
        also fills rows for flash-attention varlen), and unlike grouping its rows are random mixes: batches of
        like-length examples are not random samples, and where length tracks content they train badly (demo
        task: loss 0.35 after 800 steps grouped, 0.02 packed or padded). Classification cannot pack; plain
        shuffled padding keeps its batches random too.
        """
        if self.format.task == "sequence_classification":
            if batching == "pack":
                raise UserError("--data.batching pack needs a causal LM format: a classifier reads one text per row")
            return "pad" if batching == "auto" else batching
        return "pack" if batching == "auto" else batching

    # -- preparing the data ----------------------------------------------------------------------------------

    def encode_context(self) -> EncodeContext:
        return EncodeContext(
            self.get_tokenizer(), self.token_rules.max_length, self.labels, self.num_labels, self.train_on_inputs
        )

    def get_tokenizer(self):
        if self.tokenizer is None:
            if self.tokenizer_name is None:
                raise UserError("--data.tokenizer is not set (it follows --model.model_name_or_path)")
            self.tokenizer = load_tokenizer(self.tokenizer_name)
        return self.tokenizer

    @cached_property
    def pipeline(self) -> PipelineSettings:
        return PipelineSettings(
            self.format,
            self.sources,
            self.encode_context(),
            self.token_rules,
            self.quality,
            self.split,
            self.seed,
            self.encoding_errors,
        )

    @cached_property
    def cache(self) -> DatasetCache:
        """The tokenized-data cache entry of these settings; keyed once, since keying hashes the data files."""
        return DatasetCache(self.cache_dir, self.pipeline.cache_key())

    def prepare_data(self) -> None:
        """Build the tokenized dataset once (rank 0 of each node under DDP), unless the cache has it."""
        self.load_or_build()

    def setup(self, stage: str) -> None:
        if self.datasets is None:
            tokenized, report = self.load_or_build()  # other ranks find what rank 0 built
            self.datasets, self.report = tokenized, self.describe(report, tokenized)
        if stage == "fit" and "train" not in self.datasets:
            raise UserError("--data.train_path is required to fit")

    def state_dict(self) -> dict:
        """What every checkpoint keeps of the data (Lightning saves it under this class's name): how prompts were
        rendered, so that serving renders requests the same (data/served.py), and the training prompts' profile,
        what drift detection compares live prompts with (data/profile.py)."""
        state = {"prompts": prompt_settings(self.format, self.quality)}
        if self.datasets is not None and "train" in self.datasets:
            if self.input_profile is None:
                self.input_profile = training_profile(self.model_columns("train"), self.labels)
            state["inputs"] = self.input_profile
        return state

    def load_or_build(self) -> tuple[datasets.DatasetDict, dict]:
        """(tokenized splits, the data's report) from the cache, or built by the pipeline and cached."""
        if not self.sources["train"]:
            raise UserError("--data.train_path is required")
        cached = self.cache.load()
        if cached is not None:
            rank_zero_info(f"data: tokenized cache hit {self.cache.path}")
            return cached
        self.cache.save(*build(self.pipeline, self.num_proc))
        return self.cache.load()

    def describe(self, report: dict, tokenized: datasets.DatasetDict) -> dict:
        """The data's report with this run's own facts, which the cache key leaves out: where each split is read
        from, and how this run's batching pads its batches. Warns about what the report says a user should know."""
        report = {name: {"source": self.pipeline.origin(name), **entry} for name, entry in report.items()}
        for entry in report.values():
            for warning in entry["warnings"]:
                rank_zero_warn(f"{entry['source']}: {warning}")
        lengths = list(tokenized["train"]["length"])  # a plain list: indexing a datasets Column is slow
        waste = padding_waste(lengths, self.batch_size, self.row_length, self.seed)
        report["train"]["padding_waste"] = waste
        return report | {"batching": self.batching, "unit": self.format.unit}

    # -- batches ---------------------------------------------------------------------------------------------

    @property
    def row_length(self) -> int:
        """Tokens a packed row holds: max_length per sequence, as many sequences as an example has (a pair: 2)."""
        return self.token_rules.max_length * self.format.sequences_per_example

    def model_columns(self, name: str) -> datasets.Dataset:
        """A split's columns that batches are made of."""
        split = self.datasets[name]
        return split.select_columns(
            [c for c in ("input_ids", "labels", "sequence", "desirable") if c in split.column_names]
        )

    def collator(self):
        """The function that makes a batch of this data's examples."""
        pad = self.get_tokenizer().pad_token_id
        return partial(collate, pad_token_id=pad, pad_to_multiple_of=self.pad_to_multiple_of)

    def train_dataloader(self) -> DataLoader:
        """Batches of this process's share of each optimizer step, each carrying the step's loss-term total."""
        train = self.datasets["train"]
        data, terms, order = self.model_columns("train"), list(train["terms"]), None
        lengths = list(train["length"])  # plain lists: indexing a datasets Column is slow
        batch_size = self.batch_size
        if self.batching == "pack":
            rows = pack(lengths, self.row_length, self.seed)
            data, terms = PackedDataset(data, rows), [sum(terms[i] for i in row) for row in rows]
            batch_size = rows_per_batch(self.batch_size, len(rows), len(lengths))
            rank_zero_info(f"data: {len(lengths)} examples packed into {len(rows)} rows, {batch_size} a batch")
        elif self.batching == "group_by_length":
            order = length_grouped_order(lengths, self.batch_size)
        trainer = self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        if world_size > 1 and getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise UserError(
                "set --trainer.use_distributed_sampler false: the DataModule shards training data "
                "itself, so the loss is averaged over the global batch's tokens"
            )
        taken = self.train_sampler.taken if self.train_sampler else 0  # a new loader continues the stream
        self.train_sampler = StepBatchSampler(
            terms,
            batch_size,
            self.seed,
            taken,
            trainer.accumulate_grad_batches if trainer else 1,
            world_size,
            rank,
            order,
        )
        return ResumableLoader(
            WithStepTerms(data),
            batch_sampler=self.train_sampler,
            num_workers=self.num_workers,
            collate_fn=self.collator(),
            epoch_position=(lambda: trainer.fit_loop.epoch_loop.batch_progress.current.ready) if trainer else None,
        )

    def eval_loader(self, name: str) -> DataLoader:
        data = self.model_columns(name)
        # Under DDP, Lightning's default sampler pads the eval set with repeats so every process gets as many
        # examples, and metrics count those twice; this one splits it exactly (process batch counts may differ by
        # one, which evaluation tolerates: DDP syncs buffers only on the first no-grad forward).
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = UnrepeatedDistributedSampler(data, shuffle=False) if distributed else None
        return DataLoader(
            WithIndex(data),
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self.collator(),
        )

    def val_dataloader(self) -> DataLoader | list:
        return self.eval_loader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise UserError("--data.test_path (or --data.split.test_fraction) is required to test")
        return self.eval_loader("test")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Count the training batches that reach the model: where the stream resumes (see StepBatchSampler; the
        count is saved through ResumableLoader). Counted here, not in the sampler: the loader and Lightning fetch
        batches ahead of their use."""
        if self.trainer is not None and self.trainer.training and self.train_sampler is not None:
            self.train_sampler.taken += 1
        return batch

    def describe_examples(self, ids) -> str:
        """Training examples by their source lines, e.g. for a batch that produced a non-finite loss."""
        train = self.datasets["train"]
        lines = [str(train[int(i)]["line"]) for i in ids]
        return f"{self.report['train']['source']} line{'s' * (len(lines) != 1)} {', '.join(lines) or '(none)'}"
