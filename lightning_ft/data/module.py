"""FineTuneDataModule: data files -> encoded examples -> batches, for any registered format."""

from __future__ import annotations

from functools import partial

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, RandomSampler

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.data.collate import pad_collate
from lightning_ft.data.formats import DataFormat, EncodeContext, resolve_format
from lightning_ft.data.sources import check_file, read_records
from lightning_ft.errors import UserError
from lightning_ft.loading import load_tokenizer


class EpochSeededSampler(RandomSampler):
    """A shuffle whose order depends only on (seed, number of passes made so far).

    torch's RandomSampler draws its seed from the global RNG, so after a resume the order would depend on
    whatever else consumed randomness; Lightning's `set_epoch` counter is off by one after resuming from a
    checkpoint written at the end of an epoch (seen with 2.6). So the sampler counts its own passes, and the
    DataModule saves that count in the checkpoint. Subclassing RandomSampler keeps Lightning treating the
    loader as shuffled when it swaps in a DistributedSampler.
    """

    def __init__(self, data, seed: int, passes: int = 0) -> None:
        super().__init__(data)
        self.seed = seed
        self.passes = passes

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.passes)
        self.passes += 1
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


class FineTuneDataModule(LightningDataModule):
    """Reads train / val / test files in one format and serves padded batches.

    Args:
        format: "instruction" or "classification", or a format object with its own settings
            (class_path + init_args, e.g. other field names or a prompt template).
        train_path / val_path / test_path: data files (.jsonl or .json array); val and test are optional.
        tokenizer: tokenizer directory or hub id (set from --model.model_name_or_path).
        labels / num_labels: classes for classification (set from --model.labels / --model.num_labels).
        max_length: examples are truncated to this many tokens.
        batch_size: examples per training step per device (effective batch = this x devices x accumulation).
        eval_batch_size: examples per validation/test step (default: batch_size).
        num_workers: DataLoader worker processes.
        seed: shuffle seed; the order of the n-th pass over the data depends only on (seed, n).
    """

    def __init__(
        self,
        format: str | DataFormat = "instruction",
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        tokenizer: str | None = None,
        labels: list[str] | None = None,
        num_labels: int | None = None,
        max_length: int = 512,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.format = resolve_format(format)
        self.paths = {"train": train_path, "val": val_path, "test": test_path}
        for split, path in self.paths.items():
            if path:
                check_file(path, f"--data.{split}_path")  # fail before the model loads, not after
        self.tokenizer_name = tokenizer
        self.labels = labels
        self.num_labels = num_labels
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, list[dict]] = {}
        self.tokenizer = None
        self.train_sampler: EpochSeededSampler | None = None
        self.restored_passes = 0  # from a checkpoint, for the next train sampler

    def setup(self, stage: str) -> None:
        if self.tokenizer_name is None:
            raise UserError("--data.tokenizer is not set (it follows --model.model_name_or_path)")
        self.tokenizer = self.tokenizer or load_tokenizer(self.tokenizer_name)
        ctx = EncodeContext(self.tokenizer, self.max_length, self.labels, self.num_labels)
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        if stage == "fit" and not self.paths["train"]:
            raise UserError("--data.train_path is required to fit")
        for split in needed:
            if self.paths[split] and split not in self.datasets:
                self.datasets[split] = self.encode_file(split, ctx)

    def encode_file(self, split: str, ctx: EncodeContext) -> list[dict]:
        path, flag = self.paths[split], f"--data.{split}_path"
        examples, dropped = [], 0
        for line, record in read_records(path, flag):
            try:
                example = self.format.encode(record, ctx)
            except UserError as err:
                raise UserError(f"{path}:{line}: {err}") from err
            if isinstance(example["labels"], list) and all(t == IGNORE_INDEX for t in example["labels"]):
                dropped += 1  # the prompt fills max_length: nothing left to learn from
                continue
            examples.append(example)
        if dropped:
            rank_zero_warn(f"{path}: dropped {dropped} examples whose prompt fills max_length={self.max_length}")
        if not examples:
            raise UserError(f"{flag} {path}: no usable examples")
        return examples

    def _loader(self, split: str, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=partial(pad_collate, pad_token_id=self.tokenizer.pad_token_id),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        passes = self.train_sampler.passes if self.train_sampler else self.restored_passes
        self.train_sampler = EpochSeededSampler(self.datasets["train"], self.seed, passes)
        return self._loader("train", self.batch_size, self.train_sampler)

    def state_dict(self) -> dict:
        return {"train_passes": self.train_sampler.passes if self.train_sampler else self.restored_passes}

    def load_state_dict(self, state: dict) -> None:
        self.restored_passes = state["train_passes"]

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", self.eval_batch_size) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise UserError("--data.test_path is required to test")
        return self._loader("test", self.eval_batch_size)
