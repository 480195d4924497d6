"""Training objectives. Adding one: a new file with an `Objective` subclass, plus its line in OBJECTIVES."""

from lightning_ft.objectives.base import Objective, Terms
from lightning_ft.objectives.cross_entropy import CrossEntropy
from lightning_ft.objectives.distillation import Distillation
from lightning_ft.objectives.dpo import DPO
from lightning_ft.objectives.kto import KTO
from lightning_ft.objectives.orpo import ORPO
from lightning_ft.objectives.simpo import SimPO

# The objectives `--model.objective NAME` knows by their short name (any Objective subclass works by class path).
OBJECTIVES = (CrossEntropy, Distillation, DPO, ORPO, SimPO, KTO)

__all__ = ["DPO", "KTO", "OBJECTIVES", "ORPO", "CrossEntropy", "Distillation", "Objective", "SimPO", "Terms"]
