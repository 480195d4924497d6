"""Validate a tiny classifier on an odd-sized eval set with N CPU processes; rank 0 writes the metrics as JSON.

Run by tests/test_evaluation.py as `python ddp_validate.py MODEL TRAIN VAL DEVICES OUT` (Lightning's DDP
launcher re-runs this script once per process).
"""

import json
import sys
import warnings

from lightning.pytorch import Trainer, seed_everything

from lightning_ft import FineTuneDataModule, FineTuneModule, LoRA
from lightning_ft.callbacks import ClassificationMetrics
from lightning_ft.data.quality import QualityRules

model, train, val, devices, out, cache = sys.argv[1:7]
warnings.simplefilter("ignore")
seed_everything(0)
labels = ["neg", "pos"]
module = FineTuneModule(model, task="sequence_classification", labels=labels, method=LoRA(r=4))
datamodule = FineTuneDataModule(
    "classification",
    train,
    val,
    tokenizer=model,
    labels=labels,
    eval_batch_size=2,
    cache_dir=cache,
    quality=QualityRules(exact_dedup=False),
)
trainer = Trainer(
    accelerator="cpu",
    devices=int(devices),
    strategy="ddp" if int(devices) > 1 else "auto",
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    callbacks=[ClassificationMetrics()],
    default_root_dir=out + ".run",
)
metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
if trainer.is_global_zero:
    with open(out, "w") as f:
        json.dump(metrics, f)
