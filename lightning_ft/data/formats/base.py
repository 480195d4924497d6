"""The protocol of a data format: one record in, token ids and labels out."""

# No `from __future__ import annotations` here: jsonargparse resolves a subclass's inherited annotations in the
# subclass's module, where `ClassVar` is not imported; a string annotation there turns every option unvalidated.

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.errors import UserError

__all__ = ["IGNORE_INDEX", "DataFormat", "EncodeContext", "encode_segments", "field"]


@dataclass
class EncodeContext:
    """What every format may need besides the record itself."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int  # classification truncates itself (text pairs need the tokenizer's pair logic)
    labels: list[str] | None = None  # class names, for classification
    num_labels: int | None = None
    train_on_inputs: bool = False  # loss on prompt tokens too, not only on responses


class DataFormat(ABC):
    """Turns a record (a dict read from a data file) into `input_ids` and `labels`; subclasses are dataclasses.

    Causal-LM formats return the whole example (EOS included); the pipeline truncates or drops over-long ones.
    """

    #: The model task this format trains: "causal_lm" or "sequence_classification".
    task: ClassVar[str]

    @abstractmethod
    def text_fields(self) -> list[str]:
        """Every record field holding text the model trains on or is prompted with (optional ones too): the quality
        rules normalise, scrub, deduplicate and check leakage on all of them."""

    def required_fields(self) -> list[str]:
        """The fields every record must have, not null: one missing is an error naming the file and line (an empty
        one is what the drop_empty rule counts). Default: every text field."""
        return self.text_fields()

    def key_fields(self) -> list[str]:
        """Further fields that make two records different (a label), never rewritten by the quality rules."""
        return []

    @abstractmethod
    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        """{"input_ids": [...], "labels": [...] or int}; raise UserError naming the field on bad input."""

    def generation_example(self, record: dict, tokenizer) -> dict | None:
        """{"prompt", "prompt_ids", "reference"} for generation metrics: the prompt tokenized exactly as in
        training, and the expected answer; None for formats without one."""
        return None


def field(record: dict, name: str, *, optional: bool = False) -> str:
    """The text of `record[name]` (a list of strings, as SciTLDR stores sentences, is joined with spaces)."""
    value = record.get(name)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        if name not in record:
            raise UserError(f"field '{name}' is missing (fields there: {', '.join(sorted(record)) or 'none'})")
        raise UserError(f"field '{name}' is {'empty' if value is None else f'not text ({type(value).__name__})'}")
    return value


def encode_segments(segments: list[tuple[str, bool]], ctx: EncodeContext) -> dict:
    """Token ids of the joined segments, plus EOS; a segment's tokens carry labels if it is trained on.

    Segments are tokenized apart, as generation sees them (the prompt alone, then the answer), so the loss mask
    falls exactly on the trained segments' tokens. Only the first segment gets the tokenizer's special tokens (BOS).
    """
    tokenizer = ctx.tokenizer
    input_ids: list[int] = []
    labels: list[int] = []
    for position, (text, trained) in enumerate(segments):
        ids = tokenizer(text, add_special_tokens=position == 0)["input_ids"]
        input_ids += ids
        labels += ids if trained or ctx.train_on_inputs else [IGNORE_INDEX] * len(ids)
    input_ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return {"input_ids": input_ids, "labels": labels}
