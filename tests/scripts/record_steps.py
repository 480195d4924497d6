"""A test-only callback: one JSON line per training batch (step, loss, example ids), flushed at once, so what a run
did before a SIGKILL is on disk. Used by tests/test_faults.py as `--trainer.callbacks+=record_steps.RecordSteps`
(tests/scripts on PYTHONPATH)."""

import json

from lightning.pytorch import Callback


class RecordSteps(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        row = {"step": trainer.global_step, "loss": float(outputs["loss"]), "ids": batch["example_ids"].tolist()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
