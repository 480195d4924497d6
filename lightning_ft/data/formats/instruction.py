"""Alpaca-style instruction data: instruction (+ optional input) -> output, loss on the output only."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_ft.data.formats.base import DataFormat, EncodeContext, encode_segments, field

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

    def text_fields(self) -> list[str]:
        return [self.instruction_field, self.output_field]  # input is optional: an empty one is normal

    def prompt(self, record: dict) -> str:
        instruction = field(record, self.instruction_field)
        extra = field(record, self.input_field, optional=True)
        template = self.template if extra.strip() else self.template_no_input
        return template.format(instruction=instruction, input=extra)

    def generation_example(self, record: dict, tokenizer) -> dict:
        prompt = self.prompt(record)
        return {
            "prompt": prompt,
            "prompt_ids": tokenizer(prompt)["input_ids"],
            "reference": field(record, self.output_field),
        }

    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        return encode_segments([(self.prompt(record), False), (field(record, self.output_field), True)], ctx)
