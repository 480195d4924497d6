"""RunRecord: keep `run.json` in the run dir true: written at the start, at every checkpoint and at the end."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_ft.callbacks.preemption import Preempted
from lightning_ft.callbacks.throughput import Throughput, peak_memory
from lightning_ft.files import write_json_atomically
from lightning_ft.methods.base import count_parameters
from lightning_ft.tracking.process import this_process
from lightning_ft.tracking.record import (
    HEARTBEAT_S,
    RECORD_FILE,
    UnreadableRecord,
    current_status,
    died_at,
    git_state,
    hardware,
    now,
    package_versions,
    read_run_record,
    redact,
)


class RunRecord(Callback):
    """The run record. Process 0 writes it; the numbers it needs from every process are gathered at checkpoints
    and at the end, where all processes are anyway. A run killed outright keeps the record of its last checkpoint
    (status `running`); one that raised reads `failed` with the error; a preempted one, `preempted`."""

    def __init__(self, heartbeat_every_s: float = HEARTBEAT_S) -> None:
        self.record: dict = {}
        self._started = 0.0
        self.heartbeat_every_s = heartbeat_every_s
        self._last_beat = 0.0

    def path(self, trainer: Trainer) -> Path:
        return Path(trainer.default_root_dir) / RECORD_FILE

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()
        trainable, total = pl_module.parameter_counts or count_parameters(pl_module.model)
        method = pl_module.method
        datamodule = trainer.datamodule
        config_file = Path(trainer.default_root_dir) / "config.yaml"
        try:
            previous = read_run_record(Path(trainer.default_root_dir))
        except UnreadableRecord as err:
            rank_zero_warn(f"{err}: starting a new one")
            previous = None
        if previous and current_status(previous) == "died":
            rank_zero_info(f"the previous run in {trainer.default_root_dir} {died_at(previous)}")
        previous = previous if trainer.ckpt_path else None
        self.record = {
            "schema_version": 1,
            "status": "running",
            "error": None,
            "started_at": previous["started_at"] if previous else now(),
            "starts": previous.get("starts", 1) + 1 if previous else 1,
            "updated_at": now(),
            # Who writes this record and when it last did: a `running` record whose process is gone reads `died`.
            "process": this_process(),
            "heartbeat_at": now(),
            "heartbeat_every_s": self.heartbeat_every_s,
            "run_dir": str(Path(trainer.default_root_dir).resolve()),
            "config": redact(yaml.safe_load(config_file.read_text())) if config_file.is_file() else None,
            "task": pl_module.hparams.task,
            "model": pl_module.hparams.model_name_or_path,
            "method": {"name": type(method).__name__, "settings": asdict(method) if is_dataclass(method) else {}},
            "parameters": {"trainable": trainable, "total": total, "trainable_percent": 100 * trainable / total},
            "seed": _seed(),
            "git": git_state(Path(__file__).parent),
            "packages": package_versions(),
            "hardware": hardware(type(trainer.accelerator).__name__, trainer.num_devices, trainer.num_nodes),
            "data": _data(datamodule),
            "progress": {"global_step": trainer.global_step, "epoch": trainer.current_epoch},
            "throughput": None,
            "memory": None,
            "metrics": {"best": {}, "final": {}},
            "checkpoints": {"last": None, "best": None},
        }
        self._write(trainer)
        self._last_beat = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if not self.record or time.monotonic() - self._last_beat < self.heartbeat_every_s:
            return
        self._last_beat = time.monotonic()
        self.record["heartbeat_at"] = now()
        self.record["progress"] = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
        self._write(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if not self.record:
            return  # not a training run (e.g. a tuner's trial)
        # Called while the checkpoint is being written; its path is known to the checkpoint callback already.
        self._update(trainer, gather=True)
        self._write(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.record:
            return
        self._update(trainer, gather=True)
        self.record["status"] = "completed"
        self._write(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not self.record:
            return  # failed before training started: nothing ran that a record could describe
        self._update(trainer, gather=False)  # the other processes may be anywhere: no collectives now
        if isinstance(exception, Preempted):
            self.record["status"] = "preempted"
            self.record["checkpoints"]["last"] = exception.checkpoint
        else:
            self.record["status"] = "failed"
            lost = getattr(exception, "lost_peer", None)  # PeerWatch named the process the run lost
            self.record["error"] = lost or f"{type(exception).__name__}: {exception}".strip()
        self._write(trainer)

    def _update(self, trainer: Trainer, gather: bool) -> None:
        record = self.record
        record["updated_at"] = record["heartbeat_at"] = now()
        record["progress"] = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
        throughput = next((c for c in trainer.callbacks if isinstance(c, Throughput)), None)
        if gather:
            if throughput is not None:
                record["throughput"] = throughput.totals(trainer)
            record["memory"] = peak_memory(trainer)
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        record["metrics"]["final"] = {name: value for name, value in metrics.items() if math.isfinite(value)}
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            # During a save the new file is not in place yet: name only what exists (the previous last.ckpt does).
            paths = {"last": callback.last_model_path, "best": callback.best_model_path}
            record["checkpoints"] = {
                name: path if path and Path(path).exists() else None for name, path in paths.items()
            }
            if callback.monitor and callback.best_model_score is not None:
                record["metrics"]["best"] = {callback.monitor: float(callback.best_model_score)}

    def _write(self, trainer: Trainer) -> None:
        if trainer.is_global_zero:
            write_json_atomically(self.path(trainer), self.record)


def _seed() -> int | None:
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else None


def _data(datamodule) -> dict | None:
    """The data's fingerprint (files + preprocessing settings: the tokenized cache's key) and the files."""
    if datamodule is None or not hasattr(datamodule, "cache"):
        return None
    report = datamodule.report or {}
    return {
        "fingerprint": datamodule.cache.path.name,
        "files": {name: source for name, source in datamodule.sources.items() if source},
        "examples": {name: split.get("examples") for name, split in report.items() if isinstance(split, dict)},
    }
