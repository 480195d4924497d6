"""Classification metrics for validation and test, with torchmetrics (exact across processes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from rich.console import Console
from rich.table import Table
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

AVERAGES = ("macro", "micro", "weighted")
MAX_CLASSES_SHOWN = 10  # a larger confusion matrix stays in metrics/val_report.txt


def build_metrics(num_classes: int) -> MetricCollection:
    """Accuracy; precision, recall and F1 by every average and per class; binary ones (class 1 positive) for 2."""
    metrics = {"accuracy": MulticlassAccuracy(num_classes, average="micro")}
    for name, cls in (("precision", MulticlassPrecision), ("recall", MulticlassRecall), ("f1", MulticlassF1Score)):
        for average in (*AVERAGES, "none"):
            metrics[f"{name}_{average if average != 'none' else 'per_class'}"] = cls(num_classes, average=average)
    metrics["confusion_matrix"] = MulticlassConfusionMatrix(num_classes)
    return MetricCollection(metrics)


class ClassificationMetrics(Callback):
    """Accuracy / precision / recall / F1 / confusion matrix on validation and test of a sequence classifier.

    Logged as `val_accuracy`, `val_f1_macro`, ... (binary tasks also get `val_precision`, `val_recall`, `val_f1`
    for class 1). Each evaluation also leaves a classification report in the run dir: `metrics/{stage}_report.txt`
    and `.json`; test prints it. Exact under DDP: torchmetrics sums counts across processes, and the DataModule's
    eval sampler does not pad the eval set with repeated examples (Lightning's default one does).
    """

    def __init__(self) -> None:
        self.metrics = nn.ModuleDict()
        self.label_names: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if pl_module.hparams.task != "sequence_classification" or len(self.metrics):
            return
        labels = pl_module.hparams.labels
        num_classes = len(labels) if labels else pl_module.hparams.num_labels
        self.label_names = [str(name) for name in labels] if labels else [str(i) for i in range(num_classes)]
        self.metrics = nn.ModuleDict({split: build_metrics(num_classes) for split in ("val", "test")})
        self.metrics.to(pl_module.device)

    def _update(self, split: str, outputs: dict) -> None:
        if len(self.metrics) and outputs:
            self.metrics[split].update(outputs["preds"], outputs["target"])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("val", outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("test", outputs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the confusion matrix in the console at each validation while it is small enough to read there
        self._finish("val", trainer, pl_module, show_confusion=len(self.label_names) <= MAX_CLASSES_SHOWN)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("test", trainer, pl_module, show=True)

    def _finish(
        self, split: str, trainer: Trainer, pl_module: LightningModule, show: bool = False, show_confusion: bool = False
    ) -> None:
        if not len(self.metrics):
            return
        if trainer.sanity_checking:
            self.metrics[split].reset()
            return
        values = self.metrics[split].compute()  # all-reduced across processes
        self.metrics[split].reset()
        report = self.report(values)
        for name, value in report["overall"].items():
            pl_module.log(f"{split}_{name}", value)
        if trainer.is_global_zero:
            self.save(report, Path(trainer.default_root_dir) / "metrics", split, show)
            if show_confusion and not show:
                Console().print(confusion_table(report, f"{split} confusion matrix at step {trainer.global_step}"))

    def report(self, values: dict[str, torch.Tensor]) -> dict:
        overall = {"accuracy": values["accuracy"].item()}
        for name in ("precision", "recall", "f1"):
            overall.update({f"{name}_{average}": values[f"{name}_{average}"].item() for average in AVERAGES})
        if len(self.label_names) == 2:  # binary: the positive class is class 1
            overall.update({name: values[f"{name}_per_class"][1].item() for name in ("precision", "recall", "f1")})
        confusion = values["confusion_matrix"]
        per_class = {
            label: {
                "precision": values["precision_per_class"][i].item(),
                "recall": values["recall_per_class"][i].item(),
                "f1": values["f1_per_class"][i].item(),
                "support": int(confusion[i].sum()),
            }
            for i, label in enumerate(self.label_names)
        }
        return {
            "overall": overall,
            "per_class": per_class,
            "confusion_matrix": confusion.tolist(),
            "labels": self.label_names,
        }

    def save(self, report: dict, folder: Path, split: str, show: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}_report.json").write_text(json.dumps(report, indent=2))
        tables = [report_table(report, f"{split} classification report"), confusion_table(report, "confusion matrix")]
        with (folder / f"{split}_report.txt").open("w") as f:
            Console(file=f, width=120).print(*tables)
        if show:
            Console().print(*tables)


def report_table(report: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, row in report["per_class"].items():
        table.add_row(label, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
    overall, support = report["overall"], sum(row["support"] for row in report["per_class"].values())
    for average in AVERAGES:
        table.add_row(
            f"{average} avg", *(f"{overall[f'{n}_{average}']:.4f}" for n in ("precision", "recall", "f1")), str(support)
        )
    table.add_row("accuracy", "", "", f"{overall['accuracy']:.4f}", str(support))
    return table


def confusion_table(report: dict, title: str) -> Table:
    """Rows are the true labels, columns the predicted ones (torchmetrics' layout), both named."""
    table = Table(title=title)
    table.add_column("true \\ predicted", justify="left")
    for label in report["labels"]:
        table.add_column(label, justify="right")
    for label, row in zip(report["labels"], report["confusion_matrix"]):
        table.add_row(label, *(str(int(count)) for count in row))
    return table
