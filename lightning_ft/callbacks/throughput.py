"""Throughput and memory: real tokens per second (not padding), samples per second, MFU where known, peak memory."""

from __future__ import annotations

import resource
import time

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ThroughputMonitor


def batch_samples(batch: dict) -> int:
    return int(batch["input_ids"].size(0))


def batch_tokens(batch: dict) -> int:
    """Tokens that are not padding: the collator counts them (a packed row's padding is indistinguishable)."""
    return int(batch["num_tokens"]) if "num_tokens" in batch else int(batch["input_ids"].numel())


class Throughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor given a length function, so its `train/items_per_sec` (and `device/...`) are
    real tokens per second; it logs every `log_every_n_steps` and shows MFU on GPUs whose peak it knows, when the
    module states `flops_per_batch`.

    Also keeps what a run record summarises, over the whole run and across resumes: tokens and samples trained on
    (all processes), training wall time, and peak memory (process RSS; GPU max allocated).
    """

    def __init__(self, window_size: int = 50) -> None:
        super().__init__(batch_size_fn=batch_samples, length_fn=batch_tokens, window_size=window_size)
        self.restored = {"tokens": 0, "samples": 0, "seconds": 0.0}
        self._local = {"tokens": 0, "samples": 0}
        self._started: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._local = {"tokens": 0, "samples": 0}
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._local["tokens"] += batch_tokens(batch)
        self._local["samples"] += batch_samples(batch)

    def local_tokens_per_s(self) -> float | None:
        """This process's real tokens per second since training (re)started."""
        seconds = time.perf_counter() - self._started if self._started else 0.0
        return self._local["tokens"] / seconds if seconds > 0 else None

    def totals(self, trainer: Trainer) -> dict:
        """Run totals over every process. A collective: call it on all processes at the same point."""
        local = torch.tensor([self._local["tokens"], self._local["samples"]], dtype=torch.float64)
        tokens, samples = trainer.strategy.reduce(local.to(trainer.strategy.root_device), reduce_op="sum").tolist()
        seconds = self.restored["seconds"] + (time.perf_counter() - self._started if self._started else 0.0)
        tokens, samples = self.restored["tokens"] + int(tokens), self.restored["samples"] + int(samples)
        return {
            "tokens": tokens,
            "samples": samples,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds else None,
            "samples_per_s": samples / seconds if seconds else None,
        }

    def state_dict(self) -> dict:
        return dict(self.restored)  # replaced by the run's totals in on_save_checkpoint, which Lightning calls next

    def load_state_dict(self, state_dict: dict) -> None:
        self.restored = {key: state_dict[key] for key in ("tokens", "samples", "seconds")}

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        totals = self.totals(trainer)  # every process saves a checkpoint, so every process gets here
        checkpoint["callbacks"][self.state_key] = {key: totals[key] for key in ("tokens", "samples", "seconds")}


def peak_memory(trainer: Trainer) -> dict:
    """Peak resident memory of the largest process (MB), and the GPU's max allocated memory (MB) on CUDA."""
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes
    peak = trainer.strategy.reduce(torch.tensor(rss_mb, device=trainer.strategy.root_device), reduce_op="max")
    gpu = torch.cuda.max_memory_allocated() / 2**20 if trainer.strategy.root_device.type == "cuda" else None
    return {"peak_rss_mb": round(float(peak), 1), "peak_gpu_allocated_mb": None if gpu is None else round(gpu, 1)}
