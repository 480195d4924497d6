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
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from lightning_ft.callbacks import (
    Checkpoint,
    ClassificationMetrics,
    GenerationMetrics,
    Preemption,
    RestoreBestWeights,
    RunRecord,
    StepGuard,
    Throughput,
    progress_bar,
)
from lightning_ft.checkpoints import SafeCheckpointIO, check_checkpoint, newest_checkpoint
from lightning_ft.data import FineTuneDataModule
from lightning_ft.distributed.presets import check_strategy, fill_data_parallel_size, fit_quant_storage
from lightning_ft.errors import UserError
from lightning_ft.files import remove_partial_files, write_atomically
from lightning_ft.methods import METHODS
from lightning_ft.module import FineTuneModule
from lightning_ft.precision import fastest_precision
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
        write_atomically(run_dir / "config.yaml", lambda f: yaml.safe_dump(resolved, f, sort_keys=False), "w")


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
        parser.add_lightning_class_args(StepGuard, "guard")
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
            config.ckpt_path = resume_point(config.ckpt_path, run_dir, tidy=True)
            prepare_loggers(config.trainer, run_dir)

    def _parse_ckpt_path(self) -> None:
        """Lightning 2.6 loads a --ckpt_path file here (with a raw traceback when it is torn) and overwrites the
        command's model settings with the checkpoint's hyperparameters, silently. Here the command says what the
        run is, and a checkpoint that does not fit it is one clear error (FineTuneModule.on_load_checkpoint)."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":  # the only place where the fit method's arguments exist to take a default
            parser.set_defaults(ckpt_path="auto")
        return parser

    # The overrides of LightningCLI's private steps: _prepare_subcommand_parser above, and below the only places
    # where the progress bar can depend on `enable_progress_bar` (a bar among the default callbacks breaks
    # `--trainer.enable_progress_bar false`) and the checkpoint reader on what the user configured, and where code
    # runs after the subcommand whether it failed or not.
    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        user_bars = [c for c in config.get("callbacks") or [] if isinstance(c, ProgressBar)]
        if config.get("enable_progress_bar") is not False and not user_bars:
            callbacks = [*callbacks, progress_bar()]  # a rich bar on a terminal, plain lines in a log file
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        strategy_io = getattr(config.get("strategy"), "_checkpoint_io", None)
        if not strategy_io and not any(isinstance(p, CheckpointIO) for p in plugins):
            # unless the user configured their own: atomic writes, weights-only reads (see checkpoints.py)
            config = {**config, "plugins": [*plugins, SafeCheckpointIO()]}
        if config.get("precision") is None:  # not set: the fastest correct one on this device
            config = {**config, "precision": fastest_precision(config.get("accelerator"))}
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


def resume_point(ckpt_path: str | None, run_dir: Path, tidy: bool = False) -> str | None:
    """What `fit` resumes from.

    `auto` (the default; `last` means the same): the newest readable checkpoint in the run dir, or the start when
    there is none, so rerunning a killed command continues it. A path: that checkpoint, checked now (a torn or
    unsafe file is one error line, before a model loads). `null`: the start, refused when the run dir already
    holds checkpoints (never overwritten). A requeued SLURM job always continues from the newest checkpoint.

    `tidy` (the run about to train; not a SLURM submission, whose job may be writing there) removes the temp files
    of saves a kill interrupted and sets unreadable checkpoints aside.
    """
    if tidy:
        for leftover in remove_partial_files(run_dir / "checkpoints"):
            rank_zero_info(f"removed {leftover}: a checkpoint write that a kill cut short")
    requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
    if ckpt_path in ("auto", "last") or requeued:
        newest = newest_checkpoint(run_dir, set_aside=tidy)
        rank_zero_info(
            f"resuming from {newest}" if newest else f"no checkpoint in {run_dir} yet: training from the start"
        )
        return str(newest) if newest else None
    if ckpt_path is None:
        newest = newest_checkpoint(run_dir, set_aside=tidy)
        if newest:
            raise UserError(
                f"--ckpt_path null starts afresh, but {run_dir} holds {newest}: resume with --ckpt_path auto, or "
                "choose another --trainer.default_root_dir"
            )
        return None
    check_checkpoint(Path(ckpt_path))
    return ckpt_path


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


def explain(err: Exception, argv: list[str] = ()) -> str:
    """One line for the user; jsonargparse's multi-line union reports become the choices they had, and an unknown
    key is traced to the --config file that holds it."""
    message = " ".join(str(err).split())
    unknown = re.match(r'Parser key "model.method":.*Given value: (\S+)', message)
    if unknown:
        choices = ", ".join(cls.__name__ for cls in METHODS)
        return f"--model.method: unknown method '{unknown.group(1)}' (choose from {choices}, or a full class path)"
    unexpected = re.search(r"does not accept option '([\w.]+)'", message)
    if unexpected:
        source = config_file_with_key(argv, unexpected.group(1))
        return f"{source}: unknown key '{unexpected.group(1)}'" if source else message
    return message


def config_file_with_key(argv: list[str], key: str) -> str | None:
    """The last `--config FILE` in argv whose YAML sets the dotted `key` (the one that wins), if any."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    files += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    missing = object()
    for path in reversed(files):
        try:
            node = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        for part in key.split("."):
            node = node.get(part, missing) if isinstance(node, dict) else missing
        if node is not missing:
            return path
    return None
