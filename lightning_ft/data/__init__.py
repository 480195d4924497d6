"""The data layer: files -> records -> formats -> batches."""

from lightning_ft.data.formats import FORMATS, DataFormat
from lightning_ft.data.module import FineTuneDataModule

__all__ = ["FORMATS", "DataFormat", "FineTuneDataModule"]
