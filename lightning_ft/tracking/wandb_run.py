"""One W&B run per run dir, continued across resumes and SLURM requeues."""

from __future__ import annotations

import uuid
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.utilities.rank_zero import rank_zero_only

ID_FILE = "wandb_run_id"


def continue_wandb_run(trainer_config: Namespace, run_dir: Path) -> None:
    """Give each WandbLogger without an id of its own the run dir's W&B run id.

    W&B opens a new run at every start unless told an id; Lightning's WandbLogger then resumes it ("allow"), so a
    resumed or requeued run keeps logging into one run instead of leaving a trail of partial ones.
    """
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not (isinstance(logger, Namespace) and str(logger.class_path).endswith("WandbLogger")):
            continue
        if not logger.init_args.get("id") and not logger.init_args.get("version"):
            logger.init_args.id = run_id(run_dir)


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
