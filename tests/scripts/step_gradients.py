"""One optimizer step of LoRA on the tiny model with a given batch split; rank 0 saves the gradients it stepped with.

tests/test_scale.py calls `step_gradients` in its own process for one device, and runs this file as
`python step_gradients.py MODEL TRAIN BATCH ACCUMULATE DEVICES OUT CACHE` for more (Lightning's DDP launcher re-runs
this script once per process).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_ft import FineTuneDataModule, FineTuneModule, LoRA


class SaveGradients(Callback):
    def __init__(self, out: str | Path) -> None:
        self.out = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.is_global_zero:  # gradients are already averaged over processes here
            grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.out)


def step_gradients(model, train, batch_size, accumulate, devices, out, cache) -> None:
    """Take one step of `batch_size` x `accumulate` per process on `devices` CPU processes; save rank 0's gradients
    to `out`. The arguments may be strings (from the command line)."""
    model, train, out, cache = str(model), str(train), str(out), str(cache)
    devices = int(devices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seed_everything(0)
        module = FineTuneModule(model, method=LoRA(r=4, dropout=0.0))
        datamodule = FineTuneDataModule(
            "instruction", train, tokenizer=model, batch_size=int(batch_size), batching="pad", cache_dir=cache
        )
        trainer = Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            max_steps=1,
            accumulate_grad_batches=int(accumulate),
            use_distributed_sampler=False,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[SaveGradients(out)],
            default_root_dir=out + ".run",
        )
        trainer.fit(module, datamodule)


if __name__ == "__main__":
    step_gradients(*sys.argv[1:8])
