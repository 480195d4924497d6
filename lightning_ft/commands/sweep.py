"""`lightning-ft sweep`: one fit per combination of `--grid 'KEY=[V1, V2]'` values, then their comparison.

Each combination runs in `<run dir>/<key=value_...>` from the resolved configuration frozen in
`<run dir>/sweep_config.yaml` plus its values, all in one W&B group (the run dir's name), and `<run dir>/sweep.html`
compares them. Every combination's configuration is checked before the first one trains. With --slurm (and the job
options of `slurm submit`) each is submitted as a SLURM job instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser

from lightning_ft.commands import slurm as slurm_command
from lightning_ft.commands.fit import CommandCLI, FineTuneCLI
from lightning_ft.commands.parsing import explain
from lightning_ft.errors import UserError
from lightning_ft.tracking import sweep
from lightning_ft.tracking.compare import compare


def arguments(parser: LightningArgumentParser) -> None:
    parser.add_argument("--grid", action="append", type=str, default=[], help="KEY=[V1, V2]: one fit per value")
    parser.add_argument("--slurm", action="store_true", help="submit each combination as a SLURM job")
    slurm_command.add_job_arguments(parser)


def main(argv: list[str]) -> None:
    """lightning-ft sweep --config X.yaml --grid 'KEY=[V1,V2]' [--grid ...] [fit flags] [--slurm [job options]]"""
    cli = CommandCLI("sweep", argv, arguments, build=False)
    config = cli.config
    plan = sweep.trials(config.grid)
    request = slurm_command.job_request(config) if config.slurm else None
    if request is None and any(config[name] != default for name, default in slurm_command.JOB_DEFAULTS.items()):
        raise UserError("the job options (--nodes, --gpus-per-node, ...) are for --slurm: add it, or drop them")
    root = Path(config.trainer.default_root_dir or ".")
    frozen = root / "sweep_config.yaml"
    runs = {
        trial.name: ["--config", str(frozen), *trial.flags, "--trainer.default_root_dir", str(root / trial.name)]
        for trial in plan
    }
    with tempfile.TemporaryDirectory() as scratch:  # every combination is checked before the run dir is made
        check = cli.freeze(Path(scratch) / frozen.name)
        parsed = {}
        for name, args in runs.items():
            try:
                parsed[name] = CommandCLI("sweep", [arg.replace(str(frozen), str(check)) for arg in args], build=False)
            except (UserError, ArgumentError) as err:
                raise UserError(f"sweep {name}: {explain(err, args)}") from None
    cli.freeze(frozen)
    os.environ.setdefault("WANDB_RUN_GROUP", root.name)  # W&B groups every run of the sweep
    failed = []
    for name, args in runs.items():
        print(f"sweep: {name} ({len(failed)} failed so far)")
        try:
            if request is not None:
                slurm_command.submit(parsed[name], request)
            else:
                FineTuneCLI(args=["fit", *args])
        except Exception as err:  # noqa: BLE001 - one failed combination must not stop the others
            print(f"sweep: {name} failed: {explain(err, args)}", file=sys.stderr)
            failed.append(name)
    if request is None:
        compare([str(root / name) for name in runs], output=str(root / "sweep.html"))
    if failed:
        raise UserError(f"sweep: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}")
