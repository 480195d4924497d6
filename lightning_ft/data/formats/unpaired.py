"""Unpaired feedback, for KTO: a prompt, one completion, and whether it is desirable (thumbs up or down).

  {"prompt": str | [turns], "completion": str | [turns], "label": true | false}

tokenized as TRL's KTOTrainer tokenizes it (as preference pairs are: preference.py). KTO's reference point is the
policy's KL divergence from the reference, estimated on mismatched pairs: each example also holds its prompt
followed by the completion of the record before it in the split (the first takes the last's), tokens joined as TRL
joins them. So an example is two sequences, the completion then the mismatched one, and packs as a pair does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lightning_ft.data.formats.base import DataFormat, EncodeContext, TokenRules
from lightning_ft.data.formats.chat import Chat, read_turns
from lightning_ft.data.formats.preference import prompt_and_reference, read_response, response_tokens, two_sequences
from lightning_ft.errors import UserError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass
class Unpaired(DataFormat):
    """Records of a prompt, a completion and a desirable / undesirable label.

    Args:
        prompt_field / completion_field / label_field: names of the three fields in the records; the label is
            true or false (1 / 0, "yes" / "no" are read too).
        chat_template: a Jinja chat template overriding the tokenizer's, for conversational records.
        tools_field: a field with tool/function schemas, passed to the chat template.
    """

    task = "causal_lm"
    sequences_per_example = 2
    unit = "completions"

    prompt_field: str = "prompt"
    completion_field: str = "completion"
    label_field: str = "label"
    chat_template: str | None = None
    tools_field: str | None = "tools"

    def text_fields(self) -> list[str]:
        return [self.prompt_field, self.completion_field]

    def required_fields(self) -> list[str]:
        return [*self.text_fields(), self.label_field]

    def joined_fields(self) -> list[str]:
        return self.text_fields()

    def key_fields(self) -> list[str]:
        return [self.label_field] + ([self.tools_field] if self.tools_field else [])

    @property
    def chat(self) -> Chat:
        return Chat(chat_template=self.chat_template, tools_field=self.tools_field)

    def parts(self, record: dict) -> tuple[str | list[dict], str | list[dict]]:
        prompt, completion = record.get(self.prompt_field), read_response(record, self.completion_field)
        if isinstance(prompt, list):
            turns = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
            return read_turns(prompt, self.prompt_field), turns
        if not isinstance(prompt, str):
            raise UserError(f"field '{self.prompt_field}' is neither text nor a list of turns")
        if not isinstance(completion, str):
            raise UserError(
                f"field '{self.completion_field}' is a list of turns but '{self.prompt_field}' is text: give both alike"
            )
        return prompt, completion

    def desirable(self, record: dict) -> int:
        value = record.get(self.label_field)
        if isinstance(value, bool) or value in (0, 1):
            return int(value)
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return int(value.strip().lower() in TRUE)
        raise UserError(f"field '{self.label_field}' must be true or false, got {value!r}")

    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        """{"prompt_ids", "completion_ids", "desirable"}."""
        prompt, completion = self.parts(record)
        prompt_ids, (completion_ids,) = response_tokens(self.chat, record, ctx.tokenizer, prompt, [completion])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "desirable": self.desirable(record)}

    def encode_in(self, encoded: Callable[[int], dict], index: int) -> dict:
        mismatched = encoded(index - 1)["completion_ids"]  # the first record takes the last's
        return encoded(index) | {"mismatched_ids": mismatched}

    def finish(self, encoded: dict, rules: TokenRules) -> tuple[dict | None, str]:
        """The completion, then the mismatched one (see `two_sequences`)."""
        prompt, completion, mismatched = encoded["prompt_ids"], encoded["completion_ids"], encoded["mismatched_ids"]
        example, status = two_sequences(prompt, completion, mismatched, rules)
        return (example | {"desirable": encoded["desirable"]} if example else None), status

    def empty_example(self) -> dict:
        return {"input_ids": [], "labels": [], "sequence": [], "desirable": 0}

    def loss_terms(self, example: dict) -> int:
        return 1  # KTO's loss is a mean over completions

    def prompt_record(self, request: list[dict] | str) -> dict:
        """Text is a plain prompt, as string records are; messages are a conversational one."""
        response = "" if isinstance(request, str) else [{"role": "assistant", "content": ""}]
        return {self.prompt_field: request, self.completion_field: response, self.label_field: True}

    def generation_example(self, record: dict, tokenizer) -> dict | None:
        """The prompt as the model sees it before answering, and a desirable completion (none for the others)."""
        if not self.desirable(record):
            return None
        return prompt_and_reference(self.chat, record, tokenizer, *self.parts(record))
