"""Training objectives. Adding one: a new file with an `Objective` subclass, plus its line in OBJECTIVES."""

from lightning_ft.objectives.base import Objective, Terms
from lightning_ft.objectives.cross_entropy import CrossEntropy
from lightning_ft.objectives.distillation import Distillation

# The objectives `--model.objective NAME` knows by their short name (any Objective subclass works by class path).
OBJECTIVES = (CrossEntropy, Distillation)

__all__ = ["OBJECTIVES", "CrossEntropy", "Distillation", "Objective", "Terms"]
