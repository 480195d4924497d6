"""`lightning-ft lr-find`: Lightning's learning-rate range test on a fit configuration; suggests a learning rate.

`num_training` steps with the learning rate growing exponentially from min_lr to max_lr; the suggestion is the
rate where the loss falls fastest, and the curve is saved to `<run dir>/lr_find.png`. The trial steps leave no
checkpoints, run record or best-weight selection in the run dir.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.tuner import Tuner

from lightning_ft.callbacks import RestoreBestWeights, RunRecord
from lightning_ft.commands.fit import CommandCLI
from lightning_ft.errors import UserError


def arguments(parser: LightningArgumentParser) -> None:
    parser.add_argument("--min_lr", type=float, default=1e-7, help="the rate of the first step")
    parser.add_argument("--max_lr", type=float, default=1.0, help="the rate of the last step")
    parser.add_argument("--num_training", type=int, default=100, help="steps of the test")


def tuning_cli(command: str, argv: list[str], arguments) -> CommandCLI:
    """A fit configuration built for Lightning's Tuner: its trial steps leave no checkpoints, run record or
    best-weight selection in the run dir."""
    cli = CommandCLI(command, argv, arguments)
    keep = [c for c in cli.trainer.callbacks if not isinstance(c, ModelCheckpoint | RunRecord | RestoreBestWeights)]
    cli.trainer.callbacks = keep
    return cli


def main(argv: list[str]) -> None:
    """lightning-ft lr-find --config X.yaml [fit flags] [--min_lr 1e-7] [--max_lr 1] [--num_training 100]"""
    cli = tuning_cli("lr-find", argv, arguments)
    settings = {name: cli.config[name] for name in ("min_lr", "max_lr", "num_training")}
    if not 0 < settings["min_lr"] < settings["max_lr"]:
        raise UserError(f"--min_lr {settings['min_lr']} and --max_lr {settings['max_lr']}: need 0 < min_lr < max_lr")
    if settings["num_training"] < 2:
        raise UserError(f"--num_training {settings['num_training']}: at least 2 steps")
    finder = Tuner(cli.trainer).lr_find(cli.model, datamodule=cli.datamodule, update_attr=False, **settings)
    plot = Path(cli.trainer.default_root_dir) / "lr_find.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    finder.plot(suggest=True).savefig(plot)
    suggestion = finder.suggestion()
    if suggestion is None:
        print(f"no suggestion: too few points with a finite loss; see {plot} or raise --num_training")
    else:
        print(f"suggested learning rate: {suggestion:.3g}  (--model.optim.lr {suggestion:.3g}); curve: {plot}")
