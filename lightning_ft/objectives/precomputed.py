"""`reference: precomputed`: the reference's log-probabilities of every sequence of the data, computed once before
training and cached on disk, so that no step runs the reference again (and Full fine-tuning keeps no frozen copy).

The cache lives in the tokenized data's own cache entry (keyed by the data's fingerprint), one file per reference
model: its key is the base model's files (names, sizes, modification times), the checkpoint training starts from
(`init_from`) and the dtype the reference computes in. A rerun, a resumed run, a second epoch and a later
`validate` read it. Every process computes the tables alike (one reference pass over the data, so that sharded
models run the same forwards on each); the first process writes them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_ft.errors import UserError
from lightning_ft.files import write_atomically
from lightning_ft.forward import Forward
from lightning_ft.objectives.pairs import pair_logps


def reference_key(model_name_or_path: str, init_from: str | None, dtype: str) -> str:
    """What the reference model is, without reading its weights: its files' names, sizes and times (a hub id
    by its name)."""
    parts = []
    for source in filter(None, (model_name_or_path, init_from)):
        path = Path(source).expanduser().resolve()
        files = sorted(path.iterdir()) if path.is_dir() else [path] if path.is_file() else []
        parts.append(
            [str(path) if path.exists() else source]
            + [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
        )
    return hashlib.sha256(json.dumps([parts, dtype]).encode()).hexdigest()[:16]


class PrecomputedReference:
    """Per split, each example's reference log-probability sums (examples x 2: its two sequences)."""

    def __init__(self, reference: Forward, key: str, recomputable: bool) -> None:
        self.reference = reference
        self.key = key
        # Full fine-tuning's reference is the policy itself, so it holds only until the first training step.
        self.recomputable = recomputable
        self.trained = False  # whether a training step has run (here, or before a resume)
        self.tables: dict[str, torch.Tensor] = {}

    def prepare(self, datamodule, splits: list[str], *, write: bool) -> None:
        """Load the table of each split the data has from the cache, or compute and cache it."""
        if not hasattr(datamodule, "model_columns"):
            raise UserError("reference: precomputed needs lightning_ft's FineTuneDataModule (it caches the tables)")
        splits = [split for split in splits if split in datamodule.datasets]
        path = datamodule.cache.path / "reference" / f"{self.key}.pt"
        cached = torch.load(path, weights_only=True) if path.is_file() else {}
        missing = [split for split in splits if split not in cached and split not in self.tables]
        if missing and self.trained and not self.recomputable:
            raise UserError(
                f"the precomputed reference of this data ({', '.join(missing)}) is not in {path}, and the trained "
                "weights can no longer give it: start the run afresh, or use --model.objective.reference live"
            )
        read = [split for split in splits if split in cached and split not in self.tables]
        self.tables |= {split: cached[split] for split in read}
        if read:
            rank_zero_info(f"reference log-probs: read {', '.join(read)} from {path}")
        for split in missing:
            self.tables[split] = self.compute(datamodule, split)
        if missing and write:
            write_atomically(path, lambda f: torch.save({**cached, **self.tables}, f))
        if missing:
            where = f", cached in {path}" if write else ""
            rank_zero_info(f"reference log-probs: computed {', '.join(missing)}{where}")

    @torch.no_grad()
    def compute(self, datamodule, split: str) -> torch.Tensor:
        """The split's sums, in its order, one row per sequence (as TRL's reference pass batches them)."""
        model = self.reference.model
        modes = {module: module.training for module in model.modules()}
        model.eval()
        data, collate, size = datamodule.model_columns(split), datamodule.collator(), datamodule.eval_batch_size
        device = next(model.parameters()).device
        sums = []
        for start in range(0, len(data), size):  # not a DataLoader: that draws its seed from the global RNG
            batch = collate([data[i] for i in range(start, min(start + size, len(data)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            logps = pair_logps(self.reference.label_logps(batch), batch)
            sums.append(torch.stack([logps.chosen, logps.rejected], dim=1).cpu())
        for module, training in modes.items():
            module.train(training)
        return torch.cat(sums)

    def attach(self, batch: dict, split: str) -> dict:
        """The batch with its examples' reference sums (`reference_logps`, pairs x 2)."""
        self.trained |= split == "train"
        ids = batch["example_ids"]
        if len(ids):
            values = self.tables[split][ids.cpu()]
        else:  # a copy that evens out a pass across processes: no labels, no reference needed
            values = torch.zeros(int(batch["sequence_ids"].max()) // 2 + 1, 2)
        return {**batch, "reference_logps": values.to(batch["input_ids"].device)}
