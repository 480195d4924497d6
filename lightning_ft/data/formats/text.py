"""Raw text for causal language modelling (continued pre-training, domain adaptation)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_ft.data.formats.base import DataFormat, EncodeContext, encode_segments, field


@dataclass
class Text(DataFormat):
    """Records like {"text": ...}; every token carries loss, and EOS ends each document.

    Args:
        text_field: the field holding the document.
    """

    task = "causal_lm"

    text_field: str = "text"

    def text_fields(self) -> list[str]:
        return [self.text_field]

    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        return encode_segments([(field(record, self.text_field), True)], ctx)
