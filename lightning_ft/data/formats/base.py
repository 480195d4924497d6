"""The protocol of a data format: one record in, token ids and labels out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.errors import UserError

__all__ = ["IGNORE_INDEX", "DataFormat", "EncodeContext", "field"]


@dataclass
class EncodeContext:
    """What every format may need besides the record itself."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    labels: list[str] | None = None  # class names, for classification
    num_labels: int | None = None


class DataFormat(ABC):
    """Turns a record (a dict read from a data file) into `input_ids` and `labels`; subclasses are dataclasses."""

    #: The model task this format trains: "causal_lm" or "sequence_classification".
    task: ClassVar[str]

    @abstractmethod
    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        """{"input_ids": [...], "labels": [...] or int}; raise UserError naming the field on bad input."""


def field(record: dict, name: str, *, optional: bool = False) -> str:
    """The string value of `record[name]`; a missing or non-string required field is a UserError."""
    value = record.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        problem = "missing" if value is None else f"not a string ({type(value).__name__})"
        raise UserError(f"field '{name}' is {problem}")
    return value
