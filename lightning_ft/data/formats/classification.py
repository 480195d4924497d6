"""Text (or text pair) classification: {"text": ..., "label": ...}."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_ft.data.formats.base import DataFormat, EncodeContext, field
from lightning_ft.errors import UserError


@dataclass
class Classification(DataFormat):
    """Records with a text (optionally a second text) and a label, given by name or by class id.

    Args:
        text_field: the text to classify (one label per file: sources read as {label: file} put it in "text").
        text_pair_field: a second text (e.g. the hypothesis in NLI); None for single texts.
        label_field: the label: one of `--model.labels` by name, or an integer class id.
    """

    task = "sequence_classification"

    text_field: str = "text"
    text_pair_field: str | None = None
    label_field: str = "label"

    def text_fields(self) -> list[str]:
        return [self.text_field] + ([self.text_pair_field] if self.text_pair_field else [])

    def key_fields(self) -> list[str]:
        return [self.label_field]

    def required_fields(self) -> list[str]:
        return [*self.text_fields(), self.label_field]

    def prompt_record(self, request: list | str) -> dict:
        """A text to classify, or a pair of texts [first, second] where the model was trained on pairs (its label
        is a placeholder: a served text has none)."""
        if isinstance(request, str) and not self.text_pair_field:
            return {self.text_field: request, self.label_field: 0}
        pair = isinstance(request, list) and len(request) == 2 and all(isinstance(text, str) for text in request)
        if self.text_pair_field and pair:
            return {self.text_field: request[0], self.text_pair_field: request[1], self.label_field: 0}
        wanted = "a pair of texts [first, second]" if self.text_pair_field else "one text"
        raise UserError(f"this model was trained to classify {wanted}")

    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        text = field(record, self.text_field)
        pair = field(record, self.text_pair_field) if self.text_pair_field else None
        ids = ctx.tokenizer(text, pair, truncation=True, max_length=ctx.max_length)["input_ids"]
        return {"input_ids": ids, "labels": self.label_id(record.get(self.label_field), ctx)}

    def label_id(self, value, ctx: EncodeContext) -> int:
        count = len(ctx.labels) if ctx.labels else ctx.num_labels
        if isinstance(value, str) and value.strip().isdigit() and not (ctx.labels and value in ctx.labels):
            value = int(value)  # CSV/TSV cells are text: "1" is class id 1
        if isinstance(value, str) and ctx.labels:
            if value not in ctx.labels:
                raise UserError(f"field '{self.label_field}': '{value}' is not one of --model.labels {ctx.labels}")
            return ctx.labels.index(value)
        if isinstance(value, int) and not isinstance(value, bool) and count and 0 <= value < count:
            return value
        raise UserError(
            f"field '{self.label_field}': {value!r} is not a class id in [0, {count}) "
            "(name the classes with --model.labels to use label names)"
            if count
            else f"field '{self.label_field}': set --model.labels or --model.num_labels"
        )
