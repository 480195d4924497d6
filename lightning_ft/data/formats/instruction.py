"""Alpaca-style instruction data: instruction (+ optional input) -> output, loss on the output only."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_ft.data.formats.base import IGNORE_INDEX, DataFormat, EncodeContext, field

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

    def prompt(self, record: dict) -> str:
        instruction = field(record, self.instruction_field)
        extra = field(record, self.input_field, optional=True)
        template = self.template if extra.strip() else self.template_no_input
        return template.format(instruction=instruction, input=extra)

    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        tokenizer = ctx.tokenizer
        # Prompt and response are tokenized apart so the loss mask falls exactly on the response's tokens.
        prompt_ids = tokenizer(self.prompt(record))["input_ids"]
        response_ids = tokenizer(field(record, self.output_field), add_special_tokens=False)["input_ids"]
        response_ids = response_ids + [tokenizer.eos_token_id]
        input_ids = (prompt_ids + response_ids)[: ctx.max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[: ctx.max_length]
        return {"input_ids": input_ids, "labels": labels}
