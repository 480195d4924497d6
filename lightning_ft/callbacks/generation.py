"""Generation metrics for causal LMs: greedy answers to held-out prompts scored by BLEU, ROUGE and exact match."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from sacrebleu.metrics import BLEU
from torchmetrics import MeanMetric
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from lightning_ft.prompts import left_padded


class GenerationMetrics(Callback):
    """Every validation (or every N training steps), generate answers to held-out prompts and score them.

    Scores: corpus BLEU (sacreBLEU, 0-100), ROUGE-1/2/L F-measures (rougeLsum would need nltk data downloaded
    at run time) and exact match of the stripped answer. Logged as `val_bleu`, `val_rouge1`, `val_rouge2`, `val_rougeL`,
    `val_exact_match`; a table of (prompt, reference, generation) goes to `metrics/samples_step{N}.jsonl` in the
    run dir and to loggers that take text tables (W&B). Each process generates for its share of the samples and
    torchmetrics combines the scores exactly.

    Args:
        num_samples: held-out examples to generate for (from the validation split); 0 turns the callback off.
        every_n_steps: also run every N optimizer steps; None: only at the end of each validation.
        max_new_tokens: longest generation.
        batch_size: prompts generated at once.
    """

    def __init__(
        self, num_samples: int = 16, every_n_steps: int | None = None, max_new_tokens: int = 64, batch_size: int = 8
    ) -> None:
        self.num_samples = num_samples
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.last_step = -1

    def enabled(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        datamodule = trainer.datamodule
        return (
            self.num_samples > 0
            and pl_module.hparams.task == "causal_lm"
            and datamodule is not None
            and "val" in (datamodule.datasets or {})
            and "prompt" in datamodule.datasets["val"].column_names
        )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self.every_n_steps is None:
            self.run(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # counts optimizer steps: with accumulation, several batches share one
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self.last_step:
            self.last_step = step
            self.run(trainer, pl_module)

    @torch.no_grad()
    def run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled(trainer, pl_module):
            return
        data = trainer.datamodule.datasets["val"]
        indices = [i for i in range(min(self.num_samples, len(data))) if data[i]["prompt"]]
        mine = indices[trainer.global_rank :: trainer.world_size]
        tokenizer = trainer.datamodule.get_tokenizer()
        metrics = self.scores(pl_module.device)
        rows = []
        was_training = pl_module.training
        pl_module.eval()
        for start in range(0, len(mine), self.batch_size):
            chunk = [data[i] for i in mine[start : start + self.batch_size]]
            generations = generate(
                pl_module.model, tokenizer, [row["prompt_ids"] for row in chunk], self.max_new_tokens
            )
            for row, generation in zip(chunk, generations):
                metrics["bleu"].update([generation], [[row["reference"]]])
                metrics["rouge"].update(generation, row["reference"])
                metrics["exact_match"].update(float(generation.strip() == row["reference"].strip()))
                rows.append({"prompt": row["prompt"], "reference": row["reference"], "generation": generation})
        pl_module.train(was_training)
        values = {"bleu": sacrebleu_score(metrics["bleu"]), "exact_match": metrics["exact_match"].compute().item()}
        rouge = metrics["rouge"].compute()
        values.update({key: rouge[f"{key}_fmeasure"].item() for key in ("rouge1", "rouge2", "rougeL")})
        for name, value in values.items():
            pl_module.log(f"val_{name}", value)
        self.save_samples(trainer, rows, values)

    def scores(self, device: torch.device) -> dict:
        return {
            "bleu": SacreBLEUScore().to(device),
            "rouge": ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL")).to(device),
            "exact_match": MeanMetric().to(device),
        }

    def save_samples(self, trainer: Trainer, rows: list[dict], values: dict) -> None:
        folder = Path(trainer.default_root_dir) / "metrics"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"samples_step{trainer.global_step}_rank{trainer.global_rank}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        for logger in trainer.loggers:
            if hasattr(logger, "log_text") and trainer.is_global_zero:  # W&B: a browsable table per step
                logger.log_text(
                    key="val_samples",
                    columns=["prompt", "reference", "generation"],
                    data=[[r["prompt"], r["reference"], r["generation"]] for r in rows],
                    step=trainer.global_step,
                )


def sacrebleu_score(metric: SacreBLEUScore) -> float:
    """sacreBLEU's corpus BLEU (0-100, its default exponential smoothing) from the n-gram counts torchmetrics
    summed over all processes; torchmetrics' own BLEU smooths differently and is 0 whenever no 4-gram matches."""
    with metric.sync_context():
        counts = metric.numerator.long().tolist(), metric.denominator.long().tolist()
        lengths = int(metric.preds_len.item()), int(metric.target_len.item())
    return BLEU.compute_bleu(*counts, *lengths, smooth_method="exp").score


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of tokenized prompts (left-padded: each continues from its last token), decoded."""
    batch = left_padded(prompts, tokenizer.pad_token_id, model.device)
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
