"""Cross-cutting training features as Lightning callbacks."""

from lightning_ft.callbacks.best import RestoreBestWeights
from lightning_ft.callbacks.checkpoint import Checkpoint
from lightning_ft.callbacks.classification import ClassificationMetrics
from lightning_ft.callbacks.console_summary import ConsoleSummary
from lightning_ft.callbacks.generation import GenerationMetrics
from lightning_ft.callbacks.guard import NonFiniteLoss, StepGuard
from lightning_ft.callbacks.peers import PeerLost, PeerWatch
from lightning_ft.callbacks.preemption import Preempted, Preemption
from lightning_ft.callbacks.progress import LogLines, RichProgress, progress_bar
from lightning_ft.callbacks.run_record import RunRecord
from lightning_ft.callbacks.sparsity import KeepSparsity
from lightning_ft.callbacks.throughput import Throughput
from lightning_ft.callbacks.validate_at_max_steps import ValidateAtMaxSteps

__all__ = [
    "Checkpoint",
    "ClassificationMetrics",
    "ConsoleSummary",
    "GenerationMetrics",
    "KeepSparsity",
    "LogLines",
    "NonFiniteLoss",
    "PeerLost",
    "PeerWatch",
    "Preempted",
    "Preemption",
    "RestoreBestWeights",
    "RichProgress",
    "RunRecord",
    "StepGuard",
    "Throughput",
    "ValidateAtMaxSteps",
    "progress_bar",
]
