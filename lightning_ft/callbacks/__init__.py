"""Cross-cutting training features as Lightning callbacks."""

from lightning_ft.callbacks.best import RestoreBestWeights
from lightning_ft.callbacks.checkpoint import Checkpoint
from lightning_ft.callbacks.classification import ClassificationMetrics
from lightning_ft.callbacks.generation import GenerationMetrics

__all__ = ["Checkpoint", "ClassificationMetrics", "GenerationMetrics", "RestoreBestWeights"]
