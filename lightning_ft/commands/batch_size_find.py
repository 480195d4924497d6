"""`lightning-ft batch-size-find`: Lightning's batch-size finder on a fit configuration; the largest batch that fits.

Tries --data.batch_size, then doubles it, until a step runs out of memory or max_trials sizes have been tried, and
reports the largest that fitted (the trial steps leave nothing in the run dir).
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.tuner import Tuner

from lightning_ft.commands.lr_find import tuning_cli
from lightning_ft.errors import UserError


def arguments(parser: LightningArgumentParser) -> None:
    parser.add_argument("--max_trials", type=int, default=6, help="batch sizes to try at most")
    parser.add_argument("--steps_per_trial", type=int, default=3, help="training steps per batch size")


def main(argv: list[str]) -> None:
    """lightning-ft batch-size-find --config X.yaml [fit flags] [--max_trials 6] [--steps_per_trial 3]"""
    cli = tuning_cli("batch-size-find", argv, arguments)
    settings = {name: cli.config[name] for name in ("max_trials", "steps_per_trial")}
    for name, value in settings.items():
        if value < 1:
            raise UserError(f"--{name} {value}: at least 1")
    start = cli.datamodule.batch_size
    found = Tuner(cli.trainer).scale_batch_size(
        cli.model, datamodule=cli.datamodule, mode="power", init_val=start, **settings
    )
    print(f"largest batch size that fitted: {found} (started at {start}; --data.batch_size {found})")
