"""The LightningCLI of `lightning-ft fit / validate / test / predict`, and its parse-only variants for the other
commands; one line for the user out of jsonargparse's errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from lightning_ft.callbacks import (
    Checkpoint,
    ClassificationMetrics,
    GenerationMetrics,
    Preemption,
    RestoreBestWeights,
    RunRecord,
    Throughput,
    newest_checkpoint,
    progress_bar,
)
from lightning_ft.data import FineTuneDataModule
from lightning_ft.distributed.presets import check_strategy, fill_data_parallel_size, fit_quant_storage
from lightning_ft.errors import UserError
from lightning_ft.methods import METHODS
from lightning_ft.module import FineTuneModule
from lightning_ft.tracking import finish_wandb_runs, prepare_loggers
from lightning_ft.tracking.record import redact

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SaveConfigToRunDir(SaveConfigCallback):
    """Write the resolved config to `default_root_dir/config.yaml` (not the logger's version folder).

    Overwrites the previous one: a resumed or requeued run has the same config, and an existing file must
    never stop a rerun.
    """

    def __init__(self, parser, config, **kwargs) -> None:
        super().__init__(parser, config, overwrite=True, save_to_log_dir=False)

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # Credentials never land in the run dir: a key given in a config comes back as "<redacted>".
        resolved = redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))


class FineTuneCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(
            FineTuneModule,
            FineTuneDataModule,
            save_config_callback=SaveConfigToRunDir,
            seed_everything_default=42,
            auto_configure_optimizers=False,  # the module's `optim` settings own the optimizer
            trainer_defaults={
                # ClassificationMetrics is a no-op for causal LMs; Preemption checkpoints and stops on SIGUSR1;
                # RunRecord keeps run.json, with Throughput's totals
                "callbacks": [ClassificationMetrics(), Preemption(), Throughput(), RunRecord()],
                "use_distributed_sampler": False,  # the DataModule shards the data itself (exact loss and metrics)
            },
            parser_kwargs={name: {"exit_on_error": False} for name in TRAINER_SUBCOMMANDS} | {"exit_on_error": False},
            args=args,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(RestoreBestWeights, "restore_best")
        parser.add_lightning_class_args(GenerationMetrics, "generation")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_loss",  # dropped when there is no validation data
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{step}",
            }
        )
        parser.link_arguments(
            "trainer.default_root_dir",
            "checkpoint.dirpath",
            compute_fn=lambda root: str(Path(root or ".") / "checkpoints"),
        )
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("model.labels", "data.labels")
        parser.link_arguments("model.num_labels", "data.num_labels")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        check_strategy(config.trainer)
        fill_data_parallel_size(config.trainer)
        fit_quant_storage(config.trainer, config.model)
        if self.subcommand == "fit" and not config.data.val_path and config.checkpoint.monitor:
            config.checkpoint.monitor = None  # no validation: "best" is simply the latest checkpoint
        if self.subcommand == "fit":
            run_dir = Path(config.trainer.default_root_dir or ".")
            config.ckpt_path = resume_point(config.ckpt_path, run_dir)
            prepare_loggers(config.trainer, run_dir)

    # The two overrides below are of LightningCLI's private steps: the only places where the progress bar can depend
    # on `enable_progress_bar` (a bar among the default callbacks breaks `--trainer.enable_progress_bar false`), and
    # where code runs after the subcommand whether it failed or not.
    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        user_bars = [c for c in config.get("callbacks") or [] if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar") is not False and not user_bars:
            callbacks = [*callbacks, progress_bar()]  # a rich bar on a terminal, plain lines in a log file
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # also after a failure: the next fit in this process must not log into this W&B run
            finish_wandb_runs(self.trainer.loggers)

    def after_instantiate_classes(self) -> None:
        wanted = self.datamodule.format.task
        if wanted != self.model.hparams.task:
            raise UserError(f"--data.format {type(self.datamodule.format).__name__} needs --model.task {wanted}")
        if self.datamodule.batching == "pack" and not self.model.method.supports_packing:
            raise UserError(
                f"{type(self.model.method).__name__} cannot train on packed rows (examples would attend "
                "to each other); set --data.batching group_by_length"
            )


def resume_point(ckpt_path: str | None, run_dir: Path) -> str | None:
    """What `fit` resumes from. `last` (and a requeued SLURM job) means the newest valid checkpoint in the run dir,
    or none yet; a fresh run (no --ckpt_path) into a dir that holds checkpoints is refused, never overwritten."""
    requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    if ckpt_path not in (None, "last") or (ckpt_path is None and not requeued):
        newest = None if ckpt_path else newest_checkpoint(run_dir)
        if newest:
            raise UserError(
                f"{run_dir} already holds {newest}: resume with --ckpt_path last, or choose another "
                "--trainer.default_root_dir"
            )
        return ckpt_path
    newest = newest_checkpoint(run_dir)
    rank_zero_info(f"resuming from {newest}" if newest else f"no checkpoint in {run_dir} yet: training from the start")
    return str(newest) if newest else None


class DataCLI(FineTuneCLI):
    """`lightning-ft data`: parse a fit configuration, build only its data pipeline, report on it."""

    def before_instantiate_classes(self) -> None:
        pass  # no run directory is touched: nothing trains

    def _run_subcommand(self, subcommand: str) -> None:
        pass  # instantiate the classes, run nothing; `data_command` takes over


class ConfigCLI(DataCLI):
    """A fit configuration parsed and checked, nothing built (no model is loaded on a SLURM login node)."""

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def explain(err: Exception) -> str:
    """One line for the user; jsonargparse's multi-line union reports become the choices they had."""
    message = " ".join(str(err).split())
    unknown = re.match(r'Parser key "model.method":.*Given value: (\S+)', message)
    if unknown:
        choices = ", ".join(cls.__name__ for cls in METHODS)
        return f"--model.method: unknown method '{unknown.group(1)}' (choose from {choices}, or a full class path)"
    return message
