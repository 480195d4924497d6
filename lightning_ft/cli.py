"""`lightning-ft <subcommand>`: fit / validate / test / predict through LightningCLI; `data` reports on the data.

User mistakes end as one `error: ...` line on stderr and exit status 2; `--debug` (or LIGHTNING_FT_DEBUG=1)
shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_ft.data import FineTuneDataModule
from lightning_ft.data.report import print_report
from lightning_ft.errors import UserError
from lightning_ft.methods import METHODS
from lightning_ft.module import FineTuneModule

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
        self.parser.save(self.config, run_dir / "config.yaml", skip_none=False, overwrite=True)


class FineTuneCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(
            FineTuneModule,
            FineTuneDataModule,
            save_config_callback=SaveConfigToRunDir,
            seed_everything_default=42,
            auto_configure_optimizers=False,  # the module's `optim` settings own the optimizer
            parser_kwargs={name: {"exit_on_error": False} for name in TRAINER_SUBCOMMANDS} | {"exit_on_error": False},
            args=args,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
        if self.subcommand == "fit" and not config.data.val_path and config.checkpoint.monitor:
            config.checkpoint.monitor = None  # no validation: "best" is simply the latest checkpoint
        if self.subcommand == "fit" and config.ckpt_path is None:
            existing = sorted(Path(config.checkpoint.dirpath).glob("*.ckpt"))
            if existing:
                raise UserError(
                    f"{config.checkpoint.dirpath} already holds {existing[0].name}: resume with --ckpt_path last, "
                    "or choose another --trainer.default_root_dir"
                )

    def after_instantiate_classes(self) -> None:
        wanted = self.datamodule.format.task
        if wanted != self.model.hparams.task:
            raise UserError(f"--data.format {type(self.datamodule.format).__name__} needs --model.task {wanted}")
        if self.datamodule.batching == "pack" and not self.model.method.supports_packing:
            raise UserError(
                f"{type(self.model.method).__name__} cannot train on packed rows (examples would attend "
                "to each other); set --data.batching group_by_length"
            )


class DataCLI(FineTuneCLI):
    """`lightning-ft data`: parse a fit configuration, build only its data pipeline, report on it."""

    def before_instantiate_classes(self) -> None:
        pass  # no run directory is touched: nothing trains

    def _run_subcommand(self, subcommand: str) -> None:
        pass  # instantiate the classes, run nothing; `data_command` takes over


def data_command(argv: list[str]) -> None:
    """lightning-ft data --config X.yaml [flags] [--output report.json]"""
    output = None
    if "--output" in argv:
        position = argv.index("--output")
        if position + 1 >= len(argv):
            raise UserError("--output needs a file name")
        output = Path(argv[position + 1])
        argv = argv[:position] + argv[position + 2 :]
    datamodule = DataCLI(args=["fit", *argv]).datamodule
    datamodule.setup("fit")
    print_report(datamodule.report)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(datamodule.report, indent=2))
        print(f"report: {output}")


def explain(err: Exception) -> str:
    """One line for the user; jsonargparse's multi-line union reports become the choices they had."""
    message = " ".join(str(err).split())
    unknown = re.match(r'Parser key "model.method":.*Given value: (\S+)', message)
    if unknown:
        choices = ", ".join(cls.__name__ for cls in METHODS)
        return f"--model.method: unknown method '{unknown.group(1)}' (choose from {choices}, or a full class path)"
    return message


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LIGHTNING_FT_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    # We hand LightningCLI the (filtered) sys.argv ourselves; its warning about that is meant for other cases.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    try:
        if argv[:1] == ["data"]:
            data_command(argv[1:])
        else:
            FineTuneCLI(args=argv)
    except (UserError, ArgumentError, MisconfigurationException) as err:  # Lightning's own flag/config errors
        if debug:
            raise
        print(f"error: {explain(err)}", file=sys.stderr)
        return 2
    return 0
