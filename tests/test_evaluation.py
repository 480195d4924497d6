"""Evaluation during training: metrics equal their reference implementations, exactly under DDP; early stopping
and best-weight restore; generation metrics; cross-validation."""

from __future__ import annotations

import json
import math

import pytest
import sacrebleu
import torch
from conftest import LABELS, ROOT, classification_rows, run_in_processes, write_jsonl
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from lightning_ft import FineTuneDataModule, FineTuneModule, LoRA
from lightning_ft.callbacks import Checkpoint, ConsoleSummary, GenerationMetrics, RestoreBestWeights
from lightning_ft.callbacks.classification import ClassificationMetrics, build_metrics
from lightning_ft.callbacks.generation import sacrebleu_score
from lightning_ft.constants import IGNORE_INDEX

Y_TRUE = [0, 1, 1, 0, 1, 0, 1, 1]
Y_PRED = [0, 1, 0, 0, 1, 0, 1, 1]


def test_classification_metrics_equal_sklearn():
    metrics = build_metrics(2)
    metrics.update(torch.tensor(Y_PRED), torch.tensor(Y_TRUE))
    callback = ClassificationMetrics()
    callback.label_names = LABELS
    report = callback.report(metrics.compute())
    overall = report["overall"]
    assert overall["accuracy"] == pytest.approx(0.875) == accuracy_score(Y_TRUE, Y_PRED)
    assert (overall["precision"], overall["recall"]) == pytest.approx((1.0, 0.8))
    assert overall["f1"] == pytest.approx(0.888889, abs=1e-6) == pytest.approx(f1_score(Y_TRUE, Y_PRED))
    for average in ("macro", "micro", "weighted"):
        for name, reference in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
            assert overall[f"{name}_{average}"] == pytest.approx(reference(Y_TRUE, Y_PRED, average=average))
    assert report["confusion_matrix"] == confusion_matrix(Y_TRUE, Y_PRED).tolist()
    assert report["per_class"]["pos"]["support"] == 5


def test_multiclass_metrics_equal_sklearn():
    y_true = [0, 1, 2, 2, 1, 0, 2, 1, 1, 0, 2, 2]
    y_pred = [0, 2, 2, 1, 1, 0, 2, 0, 1, 1, 2, 0]
    values = build_metrics(3)
    values.update(torch.tensor(y_pred), torch.tensor(y_true))
    values = values.compute()
    for average in ("macro", "micro", "weighted"):
        assert values[f"f1_{average}"].item() == pytest.approx(f1_score(y_true, y_pred, average=average))
    assert values["recall_per_class"].tolist() == pytest.approx(recall_score(y_true, y_pred, average=None).tolist())


def test_generation_scores_equal_sacrebleu_and_rouge_score():
    hypotheses = ["the cat sat on the mat", "a quick brown fox jumps", "hello there general kenobi"]
    references = ["the cat is on the mat", "the quick brown fox jumped over", "hello there"]
    scores = GenerationMetrics().scores(torch.device("cpu"))
    for hypothesis, reference in zip(hypotheses, references):
        scores["bleu"].update([hypothesis], [[reference]])
        scores["rouge"].update(hypothesis, reference)
    assert sacrebleu_score(scores["bleu"]) == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    rouge = scores["rouge"].compute()
    reference_scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for key in ("rouge1", "rouge2", "rougeL"):
        expected = sum(reference_scorer.score(r, h)[key].fmeasure for h, r in zip(hypotheses, references)) / 3
        assert rouge[f"{key}_fmeasure"].item() == pytest.approx(expected, abs=1e-6)


def test_val_perplexity_is_exp_of_mean_token_nll(tiny_model, data_dir):
    seed_everything(0)
    module = FineTuneModule(str(tiny_model), method=LoRA())
    datamodule = FineTuneDataModule(
        "instruction",
        str(data_dir / "train.jsonl"),
        str(data_dir / "val.jsonl"),
        tokenizer=str(tiny_model),
        eval_batch_size=3,
    )
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            logits = module(**batch)[:, :-1]
            labels = batch["labels"][:, 1:]
            nll += torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, reduction="sum", ignore_index=IGNORE_INDEX
            ).item()
            tokens += int((labels != IGNORE_INDEX).sum())
    assert metrics["val_loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert metrics["val_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_ddp_on_an_odd_eval_set_equals_one_process(tiny_model, data_dir, tmp_path):
    """13 validation examples over 2 processes: no example counted twice, every metric exact."""
    val = write_jsonl(tmp_path / "val.jsonl", classification_rows(13, seed=5))
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"metrics{devices}.json"
        run_in_processes(
            ROOT / "tests/scripts/ddp_validate.py",
            tiny_model,
            data_dir / "cls_train.jsonl",
            val,
            devices,
            out,
            tmp_path / "cache",
        )
        results[devices] = json.loads(out.read_text())
    assert set(results[1]) >= {"val_loss", "val_accuracy", "val_f1_macro"}
    for name, value in results[1].items():
        assert results[2][name] == pytest.approx(value, abs=1e-6), name


class ScriptedScore(FineTuneModule):
    """Logs a scripted validation metric, so early stopping's decisions are known in advance."""

    SCORES = (0.50, 0.30, 0.40, 0.45, 0.20, 0.10)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self.log("score", self.SCORES[self.current_epoch])


def test_early_stopping_stops_on_schedule_and_the_best_weights_come_back(tiny_model, data_dir, tmp_path, capsys):
    seed_everything(0)
    module = ScriptedScore(str(tiny_model), method=LoRA(dropout=0.0))
    datamodule = FineTuneDataModule(
        "instruction",
        str(data_dir / "train.jsonl"),
        str(data_dir / "val.jsonl"),
        tokenizer=str(tiny_model),
        batch_size=8,
    )
    checkpoint = Checkpoint(
        dirpath=tmp_path / "checkpoints",
        monitor="score",
        mode="min",
        save_top_k=1,
        save_last=True,
        filename="best-{epoch}",
    )
    stopping = EarlyStopping(monitor="score", mode="min", patience=2)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=6,
        limit_train_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[checkpoint, stopping, RestoreBestWeights(), ConsoleSummary()],
    )
    trainer.fit(module, datamodule)
    # the console says why the fit ended before max_epochs
    assert (
        "early stopping at step 4: Monitored metric score did not improve in the last 2 records"
        in capsys.readouterr().out
    )

    # Best at epoch 1 (0.30); epochs 2 and 3 do not improve on it: patience 2 ends the run after epoch 3.
    assert stopping.stopped_epoch == 3 and trainer.current_epoch == 4
    assert checkpoint.best_model_path.endswith("best-epoch=1.ckpt")
    best = torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"]
    last_checkpoint = torch.load(checkpoint.last_model_path, weights_only=False)
    assert last_checkpoint["global_step"] == 4  # last.ckpt is the newest state, not the last new best
    last = last_checkpoint["state_dict"]
    state = module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in best.items())
    assert any(not torch.equal(state[k], v) for k, v in last.items())
    selection = json.loads((tmp_path / "checkpoints/selection.json").read_text())
    assert selection["best_model_score"] == pytest.approx(0.30) and selection["restored_best"]


def test_generation_metrics_during_fit(cli, fit_args, tmp_path):
    run_dir = tmp_path / "run"
    assert (
        cli(
            fit_args(
                "--model.method",
                "LoRA",
                "--generation.num_samples",
                "4",
                "--generation.max_new_tokens",
                "8",
                "--trainer.val_check_interval",
                "2",  # the 2 steps are not a whole epoch: validate (and generate) after them
                run_dir=run_dir,
            )
        )
        == 0
    )
    samples = list((run_dir / "metrics").glob("samples_step*_rank0.jsonl"))
    assert samples
    rows = [json.loads(line) for line in samples[0].read_text().splitlines()]
    assert len(rows) == 4 and all(row["prompt"] and row["reference"] for row in rows)


def test_classification_fit_writes_a_report(cli, fit_args, tmp_path):
    run_dir = tmp_path / "cls"
    assert (
        cli(fit_args("--model.method", "LoRA", "--trainer.max_steps", "4", run_dir=run_dir, classification=True)) == 0
    )
    report = json.loads((run_dir / "metrics/val_report.json").read_text())
    assert set(report["per_class"]) == set(LABELS)
    assert sum(row["support"] for row in report["per_class"].values()) == 8
    assert "macro avg" in (run_dir / "metrics/val_report.txt").read_text()


def test_cross_validation_reports_mean_and_std(cli, tiny_model, data_dir, tmp_path, capsys):
    root = tmp_path / "cv"
    args = [
        "cv",
        "--folds",
        "3",
        "--model.model_name_or_path",
        str(tiny_model),
        "--model.method",
        "LoRA",
        "--model.task",
        "sequence_classification",
        "--model.labels",
        json.dumps(LABELS),
        "--data.format",
        "classification",
        "--data.train_path",
        str(data_dir / "cls_train.jsonl"),
        "--data.quality.exact_dedup",
        "false",
        "--trainer.max_steps",
        "2",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert cli(args) == 0
    result = json.loads((root / "cv.json").read_text())
    assert len(result["folds"]) == 3 and all((root / f"fold_{i}/checkpoints/last.ckpt").is_file() for i in range(3))
    accuracies = [fold["val_accuracy"] for fold in result["folds"]]
    mean = sum(accuracies) / 3
    assert result["summary"]["val_accuracy"]["mean"] == pytest.approx(mean)
    std = (sum((a - mean) ** 2 for a in accuracies) / 2) ** 0.5
    assert result["summary"]["val_accuracy"]["std"] == pytest.approx(std)
    shown = capsys.readouterr().out
    assert "3-fold cross-validation" in shown
    assert "fold 2 of 3: validating on fold 1" in shown and shown.count("Trainable params") == 1  # one model summary
    for fold in range(3):  # each fold's validation split picks its best checkpoint (by val_loss, not the last one)
        selection = json.loads((root / f"fold_{fold}/checkpoints/selection.json").read_text())
        assert selection["monitor"] == "val_loss" and selection["best_model_score"] is not None
