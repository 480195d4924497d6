"""Best-checkpoint selection at the end of a fit (the `load_best_model_at_end` of transformers' Trainer)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_ft.files import write_json_atomically


class RestoreBestWeights(Callback):
    """When fit ends, load the best checkpoint's weights into the module and record which checkpoints exist.

    The best one is ModelCheckpoint's (monitor/mode from the `checkpoint` settings; early stopping, if
    configured, ends the run sooner). `checkpoints/selection.json` records monitor, best path and score, and
    the last checkpoint, so scripts need not parse file names.

    Args:
        enabled: False keeps the final weights instead of the best ones (the record is written either way).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpointing = trainer.checkpoint_callback
        if checkpointing is None:
            return
        best = checkpointing.best_model_path
        restored = bool(self.enabled and best and checkpointing.monitor)
        if restored:
            # Through the strategy: sharded ones (FSDP2, DeepSpeed) load a folder of shards in place, the others
            # return the weights to load.
            checkpoint = trainer.strategy.load_checkpoint(best, weights_only=True)
            trainer.strategy.load_model_state_dict(checkpoint, strict=False)
            rank_zero_info(
                f"restored the best weights ({checkpointing.monitor}={checkpointing.best_model_score:.4f}) from {best}"
            )
        if trainer.is_global_zero:
            score = checkpointing.best_model_score
            record = {
                "monitor": checkpointing.monitor,
                "mode": checkpointing.mode,
                "best_model_path": best,
                "best_model_score": None if score is None else float(score),
                "last_model_path": checkpointing.last_model_path,
                "restored_best": restored,
            }
            write_json_atomically(Path(checkpointing.dirpath or trainer.default_root_dir) / "selection.json", record)
