"""`lightning-ft prune`: magnitude pruning of a fit configuration's model or --ckpt, with metrics before and after.

The pruned model is written as a Hugging Face folder in --output (a new or empty folder) with `prune_report.json`.
A --ckpt's adapter is merged first. The metrics are val_loss (and perplexity) or the classification metrics;
generated samples are not scored here. Runs on one device; the run dir is not touched.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser
from rich.console import Console
from rich.table import Table

from lightning_ft.callbacks import ClassificationMetrics
from lightning_ft.commands.fit import CommandCLI
from lightning_ft.errors import UserError
from lightning_ft.files import staged_folder, write_json_atomically
from lightning_ft.loading import load_tokenizer
from lightning_ft.methods import Full
from lightning_ft.module import FineTuneModule
from lightning_ft.pruning import check_request, head_count_reloads, prune_model, sparsity_report, units_to_remove
from lightning_ft.trained import load_trained

# One process on one device (pruning and saving happen once), no logger: prune is no training run.
TRAINER_FLAGS = ("--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.logger", "false")


def arguments(parser: LightningArgumentParser) -> None:
    add = parser.add_argument
    add("--kind", type=Literal["unstructured", "heads", "neurons"], required=True, help="what to remove")
    add("--amount", type=float, required=True, help="the fraction to prune, between 0 and 1")
    add("--output", type=str, required=True, help="a new or empty folder for the pruned model")
    add("--ckpt", type=str | None, default=None, help="a fine-tuned checkpoint to prune instead of the base")


def main(argv: list[str]) -> None:
    """lightning-ft prune --config X.yaml [fit flags] --kind unstructured|heads|neurons --amount 0.5 --output DIR
    [--ckpt PATH]"""
    with tempfile.TemporaryDirectory(prefix="lightning-ft-prune-") as scratch:  # what validation writes (reports)
        cli = CommandCLI("prune", [*argv, *TRAINER_FLAGS, "--trainer.default_root_dir", scratch], arguments)
        kind, fraction, ckpt = cli.config.kind, cli.config.amount, cli.config.ckpt
        check_request(kind, fraction)
        output_dir = Path(cli.config.output)
        if output_dir.exists() and not (output_dir.is_dir() and not any(output_dir.iterdir())):
            raise UserError(f"--output {output_dir}: exists and is not an empty folder (nothing is overwritten)")
        cli.trainer.callbacks = [c for c in cli.trainer.callbacks if isinstance(c, ClassificationMetrics | ProgressBar)]
        module = load_trained(ckpt) if ckpt else cli.model
        if module.hparams.task != cli.model.hparams.task:
            raise UserError(
                f"--ckpt {ckpt} holds a {module.hparams.task} model; the config's task is {cli.model.hparams.task}"
            )
        module.configure_model()
        module.model = module.method.merge(module.model)  # adapters fold into the weights; Full's model stays
        module.method = Full()
        if kind != "unstructured":
            units_to_remove(module.model, kind, fraction)  # whole heads or neurons: refuse an amount of none or all
        if kind == "heads" and not head_count_reloads(module.model):
            raise UserError(
                "--kind heads: in transformers 5 this model's attention (BERT family) takes its head size from "
                "hidden_size / num_attention_heads, so it could not reload with fewer heads; use --kind neurons"
            )
        before = {"metrics": validation_metrics(cli, module), **sparsity_report(module.model)}
        prune_model(module.model, kind, fraction)
        after = {"metrics": validation_metrics(cli, module), **sparsity_report(module.model)}
    source = ckpt or module.hparams.model_name_or_path
    del before["layers"]  # every layer's count matters after pruning only
    report = {"kind": kind, "amount": fraction, "source": str(source), "before": before, "after": after}
    tokenizer = load_tokenizer(module.hparams.model_name_or_path, module.hparams.trust_remote_code)
    save_pruned(module.model, tokenizer, report, output_dir)
    print_prune_report(report, output_dir)


def validation_metrics(cli: CommandCLI, module: FineTuneModule) -> dict[str, float]:
    results = cli.trainer.validate(module, datamodule=cli.datamodule, verbose=False)
    if not results or not results[0]:
        raise UserError(
            "prune compares validation metrics before and after: set --data.val_path (or --data.split.val_fraction)"
        )
    return {name: float(value) for name, value in sorted(results[0].items())}


def save_pruned(model, tokenizer, report: dict, output: Path) -> None:
    """The model (save_pretrained), its tokenizer and the report, written into a hidden folder next to `output`
    that becomes `output` only once complete."""
    with staged_folder(output) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json_atomically(staging / "prune_report.json", report)
    print(f"pruned model: {output}")


def print_prune_report(report: dict, output: Path) -> None:
    before, after = report["before"], report["after"]
    table = Table(title=f"{report['kind']} pruning, amount {report['amount']:g}")
    for column in ("", "before", "after"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("parameters", f"{before['parameters']:,}", f"{after['parameters']:,}")
    table.add_row("zeros in block Linear weights", f"{before['sparsity']:.2%}", f"{after['sparsity']:.2%}")
    for name, value in before["metrics"].items():
        table.add_row(name, f"{value:.4f}", f"{after['metrics'].get(name, float('nan')):.4f}")
    Console().print(table)
    print(f"report: {output / 'prune_report.json'}")
