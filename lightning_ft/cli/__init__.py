"""`lightning-ft <subcommand>`: fit / validate / test / predict through LightningCLI; data, cv, eval, human-eval,
bench-inference, slurm, consolidate, compare, sweep, lr-find, batch-size-find, export, prune.

User mistakes end as one `error: ...` line on stderr and exit status 2; `--debug` (or LIGHTNING_FT_DEBUG=1)
shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

from jsonargparse import ArgumentError
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_ft.callbacks import Preempted
from lightning_ft.callbacks.guard import is_out_of_memory
from lightning_ft.cli.commands import (
    batch_size_find_command,
    cv_command,
    data_command,
    lr_find_command,
    prune_command,
    slurm_command,
    sweep_command,
)
from lightning_ft.cli.lightning import FineTuneCLI, explain
from lightning_ft.distributed import consolidate
from lightning_ft.errors import UserError
from lightning_ft.export import command as export_command
from lightning_ft.tracking import compare

PREEMPTED_EXIT_STATUS = 75  # sysexits' EX_TEMPFAIL: stopped early on purpose, resumable; not a success


def evaluation_command(module: str):
    """A command of lightning_ft.evaluation, imported only when run (lm-eval is slow to import)."""
    return lambda argv: importlib.import_module(f"lightning_ft.evaluation.{module}").main(argv)


# Commands beyond LightningCLI's fit / validate / test / predict.
COMMANDS = {
    "data": data_command,
    "cv": cv_command,
    "eval": evaluation_command("benchmarks"),
    "human-eval": evaluation_command("human"),
    "bench-inference": evaluation_command("inference"),
    "slurm": slurm_command,
    "consolidate": consolidate.main,
    "compare": compare.main,
    "sweep": sweep_command,
    "lr-find": lr_find_command,
    "batch-size-find": batch_size_find_command,
    "export": export_command.main,
    "prune": prune_command,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LIGHTNING_FT_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    # We hand LightningCLI the (filtered) sys.argv ourselves; its warning about that is meant for other cases.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    try:
        if argv[:1] and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            FineTuneCLI(args=argv)
    except Preempted:  # the callback has said where it saved
        return PREEMPTED_EXIT_STATUS
    except (UserError, ArgumentError, MisconfigurationException) as err:  # Lightning's own flag/config errors
        if debug:
            raise
        print(f"error: {explain(err, argv)}", file=sys.stderr)
        return 2
    except Exception as err:
        if debug or not is_out_of_memory(err):
            raise
        advice = (getattr(err, "__notes__", None) or [f"out of memory: {str(err).splitlines()[0]}"])[-1]
        print(f"error: {advice}", file=sys.stderr)
        return 1
    return 0
