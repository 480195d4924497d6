"""Loggers from config, made to fit a run dir: files under it, W&B offline without a key, one W&B run per run dir."""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_only

ID_FILE = "wandb_run_id"


def prepare_loggers(trainer_config: Namespace, run_dir: Path) -> None:
    """Fill in what each configured logger leaves open.

    - `save_dir` unset: the run dir, so everything a run writes stays in one place;
    - a WandbLogger with no API key configured (WANDB_API_KEY, `wandb login`) and no WANDB_MODE: offline, into the
      run dir (a run must not fail, or hang on a prompt, on a cluster without W&B access); `wandb sync` uploads later;
    - a WandbLogger without an id: the run dir's id, so a resumed or requeued run continues the same W&B run (W&B
      opens a new run at every start otherwise; Lightning's WandbLogger resumes a given id).
    """
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not isinstance(logger, Namespace):
            continue
        args = logger.init_args
        if "save_dir" in args and not args.save_dir:
            args.save_dir = str(run_dir)
        if not str(logger.class_path).endswith("WandbLogger"):
            continue
        if not args.get("offline") and not os.environ.get("WANDB_MODE") and not wandb_api_key_configured():
            args.offline = True
            rank_zero_info(f"W&B: no API key configured: logging offline in {run_dir}/wandb (upload with `wandb sync`)")
        if not args.get("id") and not args.get("version"):
            args.id = run_id(run_dir)


def wandb_api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_id(run_dir: Path) -> str:
    """The id kept in the run dir, made on the first start. Only the first process writes it (under srun every
    process starts at once); it is also the only one that logs to W&B."""
    path = run_dir / ID_FILE
    if path.is_file():
        return path.read_text().strip()
    made = uuid.uuid4().hex[:12]
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(made + "\n")
    return made


def finish_wandb_runs(loggers) -> None:
    """End the W&B runs a fit opened. Lightning's WandbLogger leaves the run open and the next WandbLogger in the
    same process (cv folds, sweeps, notebooks) silently logs into it: three fits, one W&B run."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
            logger._experiment = None
