"""The protocol of a data format: one record in, token ids and labels out."""

# No `from __future__ import annotations` here: jsonargparse resolves a subclass's inherited annotations in the
# subclass's module, where `ClassVar` is not imported; a string annotation there turns every option unvalidated.

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.errors import UserError

__all__ = ["IGNORE_INDEX", "DataFormat", "EncodeContext", "TokenRules", "encode_segments", "field", "finish_example"]


@dataclass
class EncodeContext:
    """What every format may need besides the record itself."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int  # classification truncates itself (text pairs need the tokenizer's pair logic)
    labels: list[str] | None = None  # class names, for classification
    num_labels: int | None = None
    train_on_inputs: bool = False  # loss on prompt tokens too, not only on responses


@dataclass
class TokenRules:
    """What happens to examples after the format tokenized them."""

    max_length: int  # tokens per sequence
    overlong: str = "truncate"  # "truncate" or "drop" examples longer than max_length
    truncation_side: str = "right"  # which end loses tokens on truncation
    min_length: int = 0  # examples shorter than this many tokens are dropped


class DataFormat(ABC):
    """Turns a record (a dict read from a data file) into `input_ids` and `labels`; subclasses are dataclasses.

    Causal-LM formats return the whole example (EOS included); the pipeline truncates or drops over-long ones.
    """

    #: The model task this format trains: "causal_lm" or "sequence_classification".
    task: ClassVar[str]
    #: Sequences in one example (a preference pair has two, each up to max_length): what a packed row holds.
    sequences_per_example: ClassVar[int] = 1
    #: What reports call the examples.
    unit: ClassVar[str] = "examples"

    @abstractmethod
    def text_fields(self) -> list[str]:
        """Every record field holding text the model trains on or is prompted with (optional ones too): the quality
        rules normalise, scrub, deduplicate and check leakage on all of them."""

    def required_fields(self) -> list[str]:
        """The fields every record must have, not null: one missing is an error naming the file and line (an empty
        one is what the drop_empty rule counts). Default: every text field."""
        return self.text_fields()

    def either_fields(self) -> list[str]:
        """Fields of which a record needs only one, as data sets spell the same thing (chat: messages or
        conversations): the pipeline requires those the data has."""
        return []

    def joined_fields(self) -> list[str]:
        """Text fields joined to one another as written, so that whitespace at their ends is part of the example:
        the whitespace rule leaves their ends alone."""
        return []

    def key_fields(self) -> list[str]:
        """Further fields that make two records different (a label), never rewritten by the quality rules."""
        return []

    @abstractmethod
    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        """{"input_ids": [...], "labels": [...] or int}; raise UserError naming the field on bad input."""

    def encode_in(self, encoded: Callable[[int], dict], index: int) -> dict:
        """The encoding of record `index` of its split, given `encoded(i)`, record i's `encode`: formats whose
        example draws on another record too (KTO's mismatched completion) read it here."""
        return encoded(index)

    def finish(self, encoded: dict, rules: TokenRules) -> tuple[dict | None, str]:
        """The example `encode` gave after the token rules (or None when they drop it), and what they did: one of
        the pipeline's TOKEN_STATUSES."""
        return finish_example(encoded, rules)

    def empty_example(self) -> dict:
        """The columns of an example, empty: what a dropped one holds (datasets needs one schema)."""
        return {"input_ids": [], "labels": [] if self.task == "causal_lm" else -1}

    def loss_terms(self, example: dict) -> int:
        """How many terms an example adds to the loss: label tokens after the first (which nothing predicts), or
        one class label. The module divides an optimizer step's summed loss by their total."""
        labels = example["labels"]
        return sum(1 for token in labels[1:] if token != IGNORE_INDEX) if isinstance(labels, list) else 1

    def generation_example(self, record: dict, tokenizer) -> dict | None:
        """{"prompt", "prompt_ids", "reference"} for generation metrics: the prompt tokenized exactly as in
        training, and the expected answer; None for formats without one."""
        return None

    def prompt_record(self, request: list[dict] | str) -> dict | None:
        """A record whose `generation_example` prompt is a served request: OpenAI chat messages ending with the
        user's turn, or a completion's prompt text (one user turn, where the format has turns). None for formats
        that train on no prompts (raw text is served as written)."""
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


def finish_example(example: dict, rules: TokenRules) -> tuple[dict | None, str]:
    """Apply the length rule and check a label is left; returns the example (or None) and what happened."""
    ids, labels = example["input_ids"], example["labels"]
    status = "kept"
    if len(ids) < rules.min_length:
        return None, "too_short"
    if len(ids) > rules.max_length:
        if rules.overlong == "drop":
            return None, "overlong_dropped"
        cut = (
            slice(0, rules.max_length) if rules.truncation_side == "right" else slice(len(ids) - rules.max_length, None)
        )
        ids = ids[cut]
        labels = labels[cut] if isinstance(labels, list) else labels
        status = "truncated"
    # The first token is never predicted (nothing precedes it), so it cannot carry the only label.
    if isinstance(labels, list) and all(t == IGNORE_INDEX for t in labels[1:]):
        return None, "no_label_tokens"
    return {"input_ids": ids, "labels": labels}, status
