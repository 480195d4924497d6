"""One optimizer step of LoRA on the tiny model with a given batch split; rank 0 saves the gradients it stepped with.

Run by tests/test_scale.py as `python step_gradients.py MODEL TRAIN BATCH ACCUMULATE DEVICES OUT CACHE` (Lightning's
DDP launcher re-runs this script once per process).
"""

import sys
import warnings

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_ft import FineTuneDataModule, FineTuneModule, LoRA

model, train, batch_size, accumulate, devices, out, cache = sys.argv[1:8]
warnings.simplefilter("ignore")


class SaveGradients(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.is_global_zero:  # gradients are already averaged over processes here
            grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, out)


seed_everything(0)
module = FineTuneModule(model, method=LoRA(r=4, dropout=0.0))
datamodule = FineTuneDataModule(
    "instruction", train, tokenizer=model, batch_size=int(batch_size), batching="pad", cache_dir=cache
)
trainer = Trainer(
    accelerator="cpu",
    devices=int(devices),
    strategy="ddp" if int(devices) > 1 else "auto",
    max_steps=1,
    accumulate_grad_batches=int(accumulate),
    use_distributed_sampler=False,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    callbacks=[SaveGradients()],
    default_root_dir=out + ".run",
)
trainer.fit(module, datamodule)
