"""Run records and the experiment trackers' view of a run."""

from lightning_ft.tracking.wandb_run import continue_wandb_run, finish_wandb_runs

__all__ = ["continue_wandb_run", "finish_wandb_runs"]
