"""`lightning-ft fit / validate / test / predict`: Lightning's LightningCLI over FineTuneModule and FineTuneDataModule.

With the run dir's config, checkpoint defaults and resume point; and `CommandCLI`, the same parser for the
commands built on a fit configuration (data, cv, sweep, slurm, lr-find, batch-size-find, prune).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import yaml
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lightning_ft.callbacks import (
    Checkpoint,
    ClassificationMetrics,
    ConsoleSummary,
    GenerationMetrics,
    PeerWatch,
    Preemption,
    RestoreBestWeights,
    RunRecord,
    StepGuard,
    Throughput,
    ValidateAtMaxSteps,
    progress_bar,
)
from lightning_ft.checkpoints import SafeCheckpointIO, resume_point
from lightning_ft.data import FineTuneDataModule
from lightning_ft.distributed.presets import (
    check_reference,
    check_strategy,
    fill_data_parallel_size,
    fit_method_to_strategy,
)
from lightning_ft.distributed.ranks import launch_rank
from lightning_ft.errors import UserError
from lightning_ft.files import write_atomically
from lightning_ft.loading import context_length
from lightning_ft.module import FineTuneModule
from lightning_ft.precision import fastest_precision
from lightning_ft.tracking.loggers import finish_wandb_runs, prepare_loggers
from lightning_ft.tracking.record import redact
from lightning_ft.tracking.run_lock import run_dir_lock

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


def main(argv: list[str]) -> None:
    """lightning-ft fit|validate|test|predict [--config X.yaml ...] [flags]"""
    with contextlib.ExitStack() as held:  # the run dir's lock, released when the fit ends, also on an error
        FineTuneCLI(args=argv, held=held)


class FineTuneCLI(LightningCLI):
    """`lightning-ft fit / validate / test / predict`; with `run=False`, the same options without a subcommand (the
    base of CommandCLI)."""

    def __init__(
        self,
        args: list[str] | None = None,
        *,
        run: bool = True,
        prog: str = "lightning-ft",
        held: contextlib.ExitStack | None = None,
    ) -> None:
        self.held = held  # where a fit keeps its run dir's lock (see main)
        top = {"exit_on_error": False, "prog": prog}
        parser_kwargs = top | {name: {"exit_on_error": False} for name in TRAINER_SUBCOMMANDS} if run else top
        super().__init__(
            FineTuneModule,
            FineTuneDataModule,
            save_config_callback=SaveConfigToRunDir,
            seed_everything_default=42,
            auto_configure_optimizers=False,  # the module's `optim` settings own the optimizer
            trainer_defaults={
                # ClassificationMetrics is a no-op for causal LMs; Preemption checkpoints and stops on SIGUSR1;
                # PeerWatch stops every process at once, naming it, when one is lost (before RunRecord, which
                # records that name); RunRecord keeps run.json, with Throughput's totals; a run shorter than its
                # validation interval validates on its last step; ConsoleSummary prints every validation metric
                # and an early stop
                "callbacks": [
                    ClassificationMetrics(),
                    Preemption(),
                    Throughput(),
                    PeerWatch(),
                    RunRecord(),
                    ValidateAtMaxSteps(),
                    ConsoleSummary(),
                ],
                "use_distributed_sampler": False,  # the DataModule shards the data itself (exact loss and metrics)
            },
            parser_kwargs=parser_kwargs,
            run=run,
            args=args,
        )

    @property
    def settings(self) -> Namespace:
        """The parsed configuration of the run (trainer, model, data, ...), with or without a subcommand."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(RestoreBestWeights, "restore_best")
        parser.add_lightning_class_args(GenerationMetrics, "generation")
        parser.add_lightning_class_args(StepGuard, "guard")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_loss",  # dropped when the data has no validation split
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
        """Checks and fills in what the strategy needs; for a fit, prepares the run dir (a command built on a fit
        configuration touches none)."""
        config = self.settings
        rank_zero_only.rank = launch_rank(config.trainer.devices)  # until the strategy sets it: the lock and W&B id
        check_strategy(config.trainer)
        fill_data_parallel_size(config.trainer)
        fit_method_to_strategy(config.trainer, config.model)
        check_reference(config.trainer, config.model)
        if self.subcommand == "fit":
            run_dir = Path(config.trainer.default_root_dir or ".")
            if self.held is not None and rank_zero_only.rank == 0:  # one lock per fit, not per process of it
                self.held.enter_context(run_dir_lock(run_dir))
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
        if not self.datamodule.validates:  # no validation: "best" is simply the latest checkpoint
            for callback in self.trainer.callbacks:
                if isinstance(callback, ModelCheckpoint):
                    callback.monitor = None
        data_format, objective = self.datamodule.format, self.model.objective
        wanted = data_format.task
        if wanted != self.model.hparams.task:
            raise UserError(f"--data.format {type(data_format).__name__} needs --model.task {wanted}")
        if objective.unit != data_format.unit:  # e.g. cross-entropy on pairs would train on the rejected answers too
            raise UserError(
                f"--model.objective {type(objective).__name__} trains on {objective.unit}; --data.format "
                f"{type(data_format).__name__} holds {data_format.unit}"
            )
        hparams, max_length = self.model.hparams, self.datamodule.token_rules.max_length
        context = context_length(hparams.model_name_or_path, hparams.trust_remote_code)
        if context and max_length > context:  # rope models run past it, but on positions they never trained on
            rank_zero_warn(
                f"--data.max_length {max_length} is longer than the model's context ({context} positions, its "
                f"max_position_embeddings): set --data.max_length {context} or less"
            )
        if self.datamodule.batching == "pack" and not self.model.method.supports_packing:
            raise UserError(
                f"{type(self.model.method).__name__} cannot train on packed rows (examples would attend "
                "to each other); set --data.batching group_by_length"
            )


class CommandCLI(FineTuneCLI):
    """The parser of a command built on a fit configuration, `lightning-ft COMMAND [fit options] [its options]`:
    Lightning's parser without a subcommand (trainer, model, data, checkpoint, ...) plus the command's own options,
    added by `arguments(parser)`; so `--help`, `--config` files, checks and errors are those of `fit`.

    `build`: instantiate the model, the data module and the trainer (nothing runs, no run dir is touched); False
    only parses and checks the configuration (no model is loaded on a SLURM login node).
    """

    def __init__(
        self,
        command: str,
        argv: list[str],
        arguments: Callable[[LightningArgumentParser], None] | None = None,
        build: bool = True,
    ) -> None:
        self._arguments, self._build, self.own_keys = arguments, build, []
        super().__init__(args=argv, run=False, prog=f"lightning-ft {command}")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        if self._arguments is not None:
            before = {action.dest for action in parser._actions}
            self._arguments(parser)
            self.own_keys = [action.dest for action in parser._actions if action.dest not in before]

    def before_instantiate_classes(self) -> None:
        """Nothing: no run dir is touched, and the strategy is the command's to check (slurm checks it for the
        allocation, not for this machine)."""

    def instantiate_classes(self) -> None:
        if self._build:
            super().instantiate_classes()

    def after_instantiate_classes(self) -> None:
        if self._build:
            super().after_instantiate_classes()

    def fit_config(self, keep: tuple[str, ...] = ()) -> Namespace:
        """The parsed configuration without this command's own options (but those in `keep`, which fit has too):
        what a `fit` of it would parse."""
        config = self.config.clone()
        for key in self.own_keys:
            if key not in keep:
                del config[key]
        return config

    def freeze(self, path: Path, keep: tuple[str, ...] = ()) -> Path:
        """Save `fit_config(keep)` as a YAML file that `lightning-ft fit --config PATH` runs (cv folds, sweep trials
        and SLURM jobs all start from such a file, so each is reproducible from it)."""
        text = self.parser.dump(self.fit_config(keep), skip_none=False, skip_check=True)
        write_atomically(path, lambda f: f.write(text), "w")
        return path
