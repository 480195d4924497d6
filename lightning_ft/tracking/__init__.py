"""Run records, loggers fitted to a run dir, comparing runs, sweeps."""

from lightning_ft.tracking.loggers import finish_wandb_runs, prepare_loggers

__all__ = ["finish_wandb_runs", "prepare_loggers"]
