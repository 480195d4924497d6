"""The commands beyond fit / validate / test / predict that build on a fit configuration: data, cv, slurm, sweep,
lr-find, batch-size-find, prune."""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.tuner import Tuner
from rich.console import Console
from rich.table import Table

from lightning_ft.callbacks import ClassificationMetrics, RestoreBestWeights, RunRecord
from lightning_ft.cli.lightning import ConfigCLI, DataCLI, FineTuneCLI, explain, resume_point
from lightning_ft.data.report import print_report
from lightning_ft.distributed import slurm
from lightning_ft.distributed.presets import check_strategy
from lightning_ft.errors import UserError
from lightning_ft.files import staged_folder, write_json_atomically
from lightning_ft.loading import load_tokenizer
from lightning_ft.methods import Full
from lightning_ft.module import FineTuneModule
from lightning_ft.pruning import check_request, head_count_reloads, prune_model, sparsity_report, units_to_remove
from lightning_ft.tracking import compare, sweep
from lightning_ft.trained import load_trained


def pop_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value of `name VALUE` in argv (or None), and argv without them."""
    if name not in argv:
        return None, argv
    position = argv.index(name)
    if position + 1 >= len(argv):
        raise UserError(f"{name} needs a value")
    return argv[position + 1], argv[:position] + argv[position + 2 :]


def data_command(argv: list[str]) -> None:
    """lightning-ft data --config X.yaml [flags] [--output report.json]"""
    output, argv = pop_option(argv, "--output")
    datamodule = DataCLI(args=["fit", *argv]).datamodule
    datamodule.setup("fit")
    print_report(datamodule.report)
    if output:
        write_json_atomically(Path(output), datamodule.report)
        print(f"report: {output}")


def cv_command(argv: list[str]) -> None:
    """lightning-ft cv --config X.yaml --folds K [flags]: one fit per fold of the training data, then mean +- std.

    Fold i validates on the i-th of K folds (`--data.split.*`) and trains on the rest, in `<run dir>/fold_i`;
    each fold's best weights are validated once more, and `<run dir>/cv.json` holds every metric per fold.
    """
    folds, argv = pop_option(argv, "--folds")
    if folds is None or not folds.isdigit() or int(folds) < 2:
        raise UserError(f"--folds needs a whole number >= 2, got {folds}")
    root = Path(DataCLI(args=["fit", *argv]).trainer.default_root_dir)
    per_fold = []
    for fold in range(int(folds)):
        fold_args = ["--data.split.num_folds", folds, "--data.split.fold", str(fold)]
        cli = FineTuneCLI(args=["fit", *argv, *fold_args, "--trainer.default_root_dir", str(root / f"fold_{fold}")])
        per_fold.append(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0])
    summary = summarize_folds(per_fold)
    print_fold_summary(summary, int(folds))
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


def slurm_command(argv: list[str]) -> None:
    """lightning-ft slurm submit --config X.yaml [--config ...] [--nodes N] [--gpus-per-node G] [job flags] [fit flags]

    Checks the configuration as `fit` would, sets the trainer's devices and nodes to the allocation, freezes the
    resolved config in `<run dir>/slurm/<time>/config.yaml` beside the sbatch script, and submits it (or only writes
    and prints it with --dry-run). Everything is checked before anything is submitted.
    """
    if argv[:1] != ["submit"]:
        raise UserError("usage: lightning-ft slurm submit --config X.yaml [--nodes N] [--gpus-per-node G] [--dry-run]")
    request, fit_argv = slurm.parse_request(argv[1:])
    cli = ConfigCLI(args=["fit", *fit_argv])
    config = cli.config.fit
    trainer = config.trainer
    for key, value in slurm.job_devices(request, trainer.devices, trainer.num_nodes, trainer.accelerator).items():
        trainer[key] = value
    check_strategy(trainer, cuda=request.gpus_per_node > 0)
    run_dir = Path(config.trainer.default_root_dir or ".").resolve()
    resume_point(config.ckpt_path, run_dir)  # refuses a fresh run into a dir that holds checkpoints
    request = dataclasses.replace(request, job_name=request.job_name or run_dir.name)
    job_dir = run_dir / "slurm" / time.strftime("%Y%m%d-%H%M%S")
    job_dir.mkdir(parents=True, exist_ok=False)
    frozen = job_dir / "config.yaml"
    cli._parser("fit").save(config, frozen, skip_none=False)
    command = f"{sys.executable} -m lightning_ft fit --config {frozen}"
    script = job_dir / "job.sbatch"
    script.write_text(slurm.render(request, trainer.devices, job_dir, Path.cwd(), command))
    if request.dry_run:
        print(script.read_text())
        print(f"wrote {script} (not submitted): sbatch {script}")
        return
    print(f"submitted job {slurm.submit(script)}: {script}; logs in {job_dir}")


def sweep_command(argv: list[str]) -> None:
    """lightning-ft sweep --config X.yaml --grid 'KEY=[V1,V2]' [--grid ...] [fit flags] [--slurm JOB FLAGS...]

    One fit per combination of the grids, in `<run dir>/<key=value_...>`, all in one W&B group (the run dir's
    name); then the comparison (`<run dir>/sweep.html`). Every combination's configuration is checked before the
    first one trains. With --slurm (the rest of the line: `slurm submit` flags) each is submitted as a job instead.
    """
    job_flags = argv[argv.index("--slurm") + 1 :] if "--slurm" in argv else None
    argv = argv[: argv.index("--slurm")] if job_flags is not None else argv
    grids = []
    while "--grid" in argv:
        grid, argv = pop_option(argv, "--grid")
        grids.append(grid)
    plan = sweep.trials(grids)
    root = Path(ConfigCLI(args=["fit", *argv]).config.fit.trainer.default_root_dir or ".")
    runs = {trial.name: [*argv, *trial.flags, "--trainer.default_root_dir", str(root / trial.name)] for trial in plan}
    for name, args in runs.items():
        try:
            ConfigCLI(args=["fit", *args])
        except (UserError, ArgumentError) as err:
            raise UserError(f"sweep {name}: {explain(err)}") from None
    os.environ.setdefault("WANDB_RUN_GROUP", root.name)  # W&B groups every run of the sweep
    failed = []
    for name, args in runs.items():
        print(f"sweep: {name} ({len(failed)} failed so far)")
        try:
            slurm_command(["submit", *job_flags, *args]) if job_flags is not None else FineTuneCLI(args=["fit", *args])
        except Exception as err:  # noqa: BLE001 - one failed combination must not stop the others
            print(f"sweep: {name} failed: {explain(err)}", file=sys.stderr)
            failed.append(name)
    if job_flags is None:
        compare.main([*(str(root / name) for name in runs), "--output", str(root / "sweep.html")])
    if failed:
        raise UserError(f"sweep: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")


def tuning_cli(argv: list[str]) -> DataCLI:
    """A fit configuration instantiated for Lightning's Tuner: its trial steps leave no checkpoints, run record or
    best-weight selection in the run dir."""
    cli = DataCLI(args=["fit", *argv])
    keep = [c for c in cli.trainer.callbacks if not isinstance(c, ModelCheckpoint | RunRecord | RestoreBestWeights)]
    cli.trainer.callbacks = keep
    return cli


def lr_find_command(argv: list[str]) -> None:
    """lightning-ft lr-find --config X.yaml [fit flags] [--min_lr 1e-7] [--max_lr 1] [--num_training 100]

    Lightning's learning-rate range test: `num_training` steps with the learning rate growing exponentially from
    min_lr to max_lr; suggests the rate where the loss falls fastest and saves the curve to `<run dir>/lr_find.png`.
    """
    settings = {}
    for name, default in (("--min_lr", "1e-7"), ("--max_lr", "1"), ("--num_training", "100")):
        value, argv = pop_option(argv, name)
        try:
            settings[name[2:]] = (int if name == "--num_training" else float)(value or default)
        except ValueError:
            raise UserError(f"{name} {value}: not a number") from None
    cli = tuning_cli(argv)
    finder = Tuner(cli.trainer).lr_find(cli.model, datamodule=cli.datamodule, update_attr=False, **settings)
    plot = Path(cli.trainer.default_root_dir) / "lr_find.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    finder.plot(suggest=True).savefig(plot)
    suggestion = finder.suggestion()
    if suggestion is None:
        print(f"no suggestion: too few points with a finite loss; see {plot} or raise --num_training")
    else:
        print(f"suggested learning rate: {suggestion:.3g}  (--model.optim.lr {suggestion:.3g}); curve: {plot}")


def batch_size_find_command(argv: list[str]) -> None:
    """lightning-ft batch-size-find --config X.yaml [fit flags] [--max_trials 6] [--steps_per_trial 3]

    Lightning's batch-size finder: tries --data.batch_size, then doubles it, until a step runs out of memory or
    max_trials sizes have been tried, and reports the largest that fitted.
    """
    settings = {}
    for name, default in (("--max_trials", "6"), ("--steps_per_trial", "3")):
        value, argv = pop_option(argv, name)
        if not (value or default).isdigit():
            raise UserError(f"{name} {value}: not a whole number")
        settings[name[2:]] = int(value or default)
    cli = tuning_cli(argv)
    start = cli.datamodule.batch_size
    found = Tuner(cli.trainer).scale_batch_size(
        cli.model, datamodule=cli.datamodule, mode="power", init_val=start, **settings
    )
    print(f"largest batch size that fitted: {found} (started at {start}; --data.batch_size {found})")


PRUNE_USAGE = "--kind unstructured|heads|neurons --amount 0.5 --output DIR [--ckpt PATH]"
# One process on one device (pruning and saving happen once), no logger: prune is no training run.
PRUNE_TRAINER_FLAGS = ("--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.logger", "false")


def prune_command(argv: list[str]) -> None:
    """lightning-ft prune --config X.yaml [fit flags] --kind unstructured|heads|neurons --amount 0.5 --output DIR
    [--ckpt PATH]

    Magnitude pruning of the fit configuration's model (or of a fine-tuned --ckpt, its adapter merged first): the
    validation metrics before and after, then the pruned model as a Hugging Face folder in --output (a new or
    empty folder) with `prune_report.json`. The metrics are val_loss (and perplexity) or the classification
    metrics; generated samples are not scored here. Runs on one device; the run dir is not touched.
    """
    kind, argv = pop_option(argv, "--kind")
    amount, argv = pop_option(argv, "--amount")
    output, argv = pop_option(argv, "--output")
    ckpt, argv = pop_option(argv, "--ckpt")
    for flag, value in (("--kind", kind), ("--amount", amount), ("--output", output)):
        if value is None:
            raise UserError(f"{flag} is required: lightning-ft prune --config X.yaml {PRUNE_USAGE}")
    try:
        fraction = float(amount)
    except ValueError:
        raise UserError(f"--amount {amount}: the fraction to prune, a number between 0 and 1") from None
    check_request(kind, fraction)
    output_dir = Path(output)
    if output_dir.exists() and not (output_dir.is_dir() and not any(output_dir.iterdir())):
        raise UserError(f"--output {output}: exists and is not an empty folder (nothing is overwritten)")
    with tempfile.TemporaryDirectory(prefix="lightning-ft-prune-") as scratch:  # what validation writes (reports)
        cli = DataCLI(args=["fit", *argv, *PRUNE_TRAINER_FLAGS, "--trainer.default_root_dir", scratch])
        cli.trainer.callbacks = [c for c in cli.trainer.callbacks if isinstance(c, ClassificationMetrics | ProgressBar)]
        module = load_trained(ckpt, distillation=None) if ckpt else cli.model
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


def validation_metrics(cli: DataCLI, module: FineTuneModule) -> dict[str, float]:
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
