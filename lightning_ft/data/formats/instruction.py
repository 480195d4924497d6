"""Alpaca-style instruction data: instruction (+ optional input) -> output, loss on the output only."""

from __future__ import annotations

import string
from dataclasses import dataclass

from lightning_ft.data.formats.base import DataFormat, EncodeContext, encode_segments, field
from lightning_ft.errors import UserError

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass
class Instruction(DataFormat):
    """Records like {"instruction": ..., "input": ..., "output": ...}; the prompt's tokens carry no loss.

    Also text-to-text data: point the fields elsewhere (SciTLDR: instruction_field=source, output_field=target).

    Args:
        instruction_field / input_field / output_field: names of the three fields in the records.
        template: prompt for records with an input; placeholders {instruction} and {input}.
        template_no_input: prompt for records whose input is empty or missing.
    """

    task = "causal_lm"

    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    template: str = ALPACA_TEMPLATE
    template_no_input: str = ALPACA_TEMPLATE_NO_INPUT

    def __post_init__(self) -> None:
        for flag, template in (("template", self.template), ("template_no_input", self.template_no_input)):
            try:
                names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
            except ValueError as err:  # a lone { or }
                raise UserError(f"--data.format.{flag}: {err} (write {{{{ and }}}} for literal braces)") from None
            unknown = sorted(names - {"instruction", "input"})
            if unknown:
                raise UserError(
                    f"--data.format.{flag}: unknown placeholder {{{unknown[0]}}} (known: {{instruction}}, {{input}})"
                )

    def text_fields(self) -> list[str]:
        return [self.instruction_field, self.input_field, self.output_field]

    def required_fields(self) -> list[str]:
        # input is optional (an empty one is normal); the instruction only when a template shows it
        uses_instruction = any("{instruction}" in t for t in (self.template, self.template_no_input))
        return [self.instruction_field, self.output_field] if uses_instruction else [self.output_field]

    def prompt(self, record: dict) -> str:
        instruction = field(
            record, self.instruction_field, optional=self.instruction_field not in self.required_fields()
        )
        extra = field(record, self.input_field, optional=True)
        template = self.template if extra.strip() else self.template_no_input
        return template.format(instruction=instruction, input=extra)

    def prompt_record(self, request: list[dict] | str) -> dict:
        if not isinstance(request, str):
            if len(request) != 1 or request[0].get("role") != "user":
                raise UserError(
                    "this model was trained on single instructions: send one user message (no system or earlier turns)"
                )
            request = request[0].get("content")
        return {self.instruction_field: request, self.input_field: "", self.output_field: ""}

    def generation_example(self, record: dict, tokenizer) -> dict:
        prompt = self.prompt(record)
        return {
            "prompt": prompt,
            "prompt_ids": tokenizer(prompt)["input_ids"],
            "reference": field(record, self.output_field),
        }

    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        return encode_segments([(self.prompt(record), False), (field(record, self.output_field), True)], ctx)
