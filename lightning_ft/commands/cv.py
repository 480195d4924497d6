"""`lightning-ft cv`: k-fold cross-validation of a fit configuration; every validation metric as mean +- std.

Fold i validates on the i-th of K folds (`--data.split.*`) and trains on the rest, in `<run dir>/fold_i`, from the
resolved configuration frozen in `<run dir>/cv_config.yaml`; each fold's best weights are validated once more, and
`<run dir>/cv.json` holds every metric per fold.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser
from rich.console import Console
from rich.table import Table

from lightning_ft.commands.fit import CommandCLI, FineTuneCLI
from lightning_ft.errors import UserError
from lightning_ft.files import write_json_atomically


def arguments(parser: LightningArgumentParser) -> None:
    parser.add_argument("--folds", type=int, required=True, help="how many folds (at least 2); each validates once")


def main(argv: list[str]) -> None:
    """lightning-ft cv --config X.yaml --folds K [fit flags]"""
    cli = CommandCLI("cv", argv, arguments, build=False)
    folds = cli.config.folds
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    root = Path(cli.config.trainer.default_root_dir or ".")
    frozen = cli.freeze(root / "cv_config.yaml")
    console, per_fold = Console(), []
    for fold in range(folds):
        run_dir = root / f"fold_{fold}"
        console.rule(f"fold {fold + 1} of {folds}: validating on fold {fold}, training on the others ({run_dir})")
        flags = ["--data.split.num_folds", str(folds), "--data.split.fold", str(fold)]
        flags += ["--trainer.default_root_dir", str(run_dir)]
        if fold:  # every fold trains the same model: its summary once is enough
            flags += ["--trainer.enable_model_summary", "false"]
        fit = FineTuneCLI(args=["fit", "--config", str(frozen), *flags])
        per_fold.append(fit.trainer.validate(fit.model, datamodule=fit.datamodule, verbose=False)[0])
    summary = summarize_folds(per_fold)
    print_fold_summary(summary, folds)
    write_json_atomically(root / "cv.json", {"folds": per_fold, "summary": summary})
    print(f"cross-validation: {root / 'cv.json'}")


def summarize_folds(per_fold: list[dict]) -> dict:
    """Mean and sample standard deviation (n - 1) of every metric over the folds."""
    names = sorted(set().union(*per_fold))
    return {
        name: {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        for name in names
        for values in [[fold[name] for fold in per_fold if name in fold]]
    }


def print_fold_summary(summary: dict, folds: int) -> None:
    table = Table(title=f"{folds}-fold cross-validation (best weights of each fold)")
    for column in ("metric", "mean", "std"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in summary.items():
        table.add_row(name, f"{value['mean']:.4f}", f"{value['std']:.4f}")
    Console().print(table)
