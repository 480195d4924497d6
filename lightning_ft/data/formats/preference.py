"""Preference pairs, for DPO and its kin: a prompt, the response people preferred and the one they did not.

Three shapes, as users have them:
  {"prompt": str, "chosen": str, "rejected": str}: plain text, tokenized as TRL's DPOTrainer tokenizes it: the prompt
      alone, and prompt + response + EOS as one text; the response starts where the two token sequences part.
  {"prompt": [turns], "chosen": str | [turns], "rejected": ...}: rendered with the chat template exactly as chat
      fine-tuning renders it (a response given as text is one assistant turn).
  {"chosen": [turns], "rejected": [turns]}: two whole conversations; the turns they share are the prompt.

A pair becomes one example of two sequences, chosen then rejected, each with its own positions from 0 and a
`sequence` column (0, 1) that tells them apart: one forward scores both, packing keeps them in one row, and
attention never crosses from one to the other. Only the responses' tokens carry labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.data.formats.base import DataFormat, EncodeContext, TokenRules
from lightning_ft.data.formats.chat import Chat, read_turns
from lightning_ft.errors import UserError


@dataclass
class Preference(DataFormat):
    """Records of a prompt and two responses, the chosen one preferred over the rejected one.

    Args:
        prompt_field / chosen_field / rejected_field: names of the three fields in the records (the prompt may be
            missing when both responses are whole conversations).
        chat_template: a Jinja chat template overriding the tokenizer's, for conversational records.
        tools_field: a field with tool/function schemas, passed to the chat template.
    """

    task = "causal_lm"
    sequences_per_example = 2
    unit = "pairs"

    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    chat_template: str | None = None
    tools_field: str | None = "tools"

    def text_fields(self) -> list[str]:
        return [self.prompt_field, self.chosen_field, self.rejected_field]

    def required_fields(self) -> list[str]:
        return [self.chosen_field, self.rejected_field]  # two whole conversations hold their prompt

    def joined_fields(self) -> list[str]:
        return self.text_fields()  # plain-text pairs are tokenized as prompt + response: " Paris" is not "Paris"

    def key_fields(self) -> list[str]:
        return [self.tools_field] if self.tools_field else []

    @property
    def chat(self) -> Chat:
        return Chat(chat_template=self.chat_template, tools_field=self.tools_field)

    def parts(self, record: dict) -> tuple[str | list[dict], str | list[dict], str | list[dict]]:
        """(prompt, chosen, rejected): all text, or all turns."""
        prompt = record.get(self.prompt_field)
        chosen, rejected = (read_response(record, name) for name in (self.chosen_field, self.rejected_field))
        if prompt is None:
            if not (isinstance(chosen, list) and isinstance(rejected, list)):
                raise UserError(
                    f"field '{self.prompt_field}' is missing (only two whole conversations may leave it out)"
                )
            shared = 0
            while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
                shared += 1
            if shared == 0 or shared == min(len(chosen), len(rejected)):
                raise UserError(
                    f"fields '{self.chosen_field}' and '{self.rejected_field}' share no prompt: two conversations "
                    "must start with the same turns and differ after them"
                )
            return chosen[:shared], chosen[shared:], rejected[shared:]
        if isinstance(prompt, list):
            prompt = read_turns(prompt, self.prompt_field)
            as_turns = [[{"role": "assistant", "content": r}] if isinstance(r, str) else r for r in (chosen, rejected)]
            return prompt, *as_turns
        if not isinstance(prompt, str):
            raise UserError(f"field '{self.prompt_field}' is neither text nor a list of turns")
        for name, response in ((self.chosen_field, chosen), (self.rejected_field, rejected)):
            if not isinstance(response, str):
                raise UserError(f"field '{name}' is a list of turns but '{self.prompt_field}' is text: give both alike")
        return prompt, chosen, rejected

    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        """{"prompt_ids", "chosen_ids", "rejected_ids"} (see `response_tokens`)."""
        prompt, chosen, rejected = self.parts(record)
        prompt_ids, (chosen_ids, rejected_ids) = response_tokens(
            self.chat, record, ctx.tokenizer, prompt, [chosen, rejected]
        )
        return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}

    def finish(self, encoded: dict, rules: TokenRules) -> tuple[dict | None, str]:
        """The pair as one example of two sequences (see `two_sequences`); a pair whose responses are the same
        tokens teaches nothing and is dropped, counted."""
        if encoded["chosen_ids"] == encoded["rejected_ids"]:
            return None, "identical_pair"
        example, status = two_sequences(encoded["prompt_ids"], encoded["chosen_ids"], encoded["rejected_ids"], rules)
        if example:
            ids, second = example["input_ids"], example["sequence"].index(1)
            if ids[:second] == ids[second:]:
                return None, "identical_pair"  # the responses were cut to the same tokens
        return example, status

    def empty_example(self) -> dict:
        return {"input_ids": [], "labels": [], "sequence": []}

    def loss_terms(self, example: dict) -> int:
        return 1  # the objectives' losses are means over pairs

    def prompt_record(self, request: list[dict] | str) -> dict:
        """Text is a plain prompt, as string records are; messages are a conversational one."""
        response = "" if isinstance(request, str) else [{"role": "assistant", "content": ""}]
        return {self.prompt_field: request, self.chosen_field: response, self.rejected_field: response}

    def generation_example(self, record: dict, tokenizer) -> dict:
        """The prompt as the model sees it before answering, and the chosen response."""
        prompt, chosen, _ = self.parts(record)
        return prompt_and_reference(self.chat, record, tokenizer, prompt, chosen)


def two_sequences(prompt: list[int], first: list[int], second: list[int], rules: TokenRules) -> tuple[dict | None, str]:
    """One example of two sequences, prompt + first then prompt + second, labelled on the responses only.

    Too long for max_length (per sequence), the prompt loses tokens from the left first; only a response longer
    than max_length on its own is cut (from the right) or, with overlong drop, the example dropped: each counted.
    """
    if not first or not second:
        return None, "no_label_tokens"
    longest = len(prompt) + max(len(first), len(second))
    if longest < rules.min_length:
        return None, "too_short"
    status = "kept"
    if longest > rules.max_length:
        status = "truncated"
        prompt = prompt[min(longest - rules.max_length, len(prompt) - 1) :]  # keep one: the first is no label
        room = rules.max_length - len(prompt)
        if max(len(first), len(second)) > room:
            if rules.overlong == "drop":
                return None, "overlong_dropped"
            first, second = first[:room], second[:room]
    sequences = [prompt + first, prompt + second]
    labels = [[IGNORE_INDEX] * len(prompt) + response for response in (first, second)]
    for label in labels:  # a sequence's first token is predicted by nothing (in a row, by the one before it)
        label[0] = IGNORE_INDEX
    return {
        "input_ids": sequences[0] + sequences[1],
        "labels": labels[0] + labels[1],
        "sequence": [0] * len(sequences[0]) + [1] * len(sequences[1]),
    }, status


def response_tokens(chat: Chat, record: dict, tokenizer, prompt, responses: list) -> tuple[list[int], list[list[int]]]:
    """The prompt's tokens and each response's, split where the prompt's tokens and each whole sequence's part (as
    TRL splits them: a template may render a prompt alone otherwise than followed by a response).

    Text is tokenized as TRL's DPOTrainer and KTOTrainer tokenize it: the prompt alone, and prompt + response + EOS
    as one text; turns are rendered with the chat template as chat fine-tuning renders them.
    """
    if isinstance(prompt, str):

        def tokens(text: str) -> list[int]:
            return tokenizer(text)["input_ids"]

        eos = tokenizer.eos_token
        prompt_ids = tokens(prompt)
        whole = [tokens(prompt + r + ("" if r.endswith(eos) else eos)) for r in responses]
    else:
        render = chat.render_function(record, tokenizer)

        def tokens(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        prompt_ids = tokens(render(prompt, True))
        whole = [tokens(render(prompt + r, False)) for r in responses]
    split = min(len(os.path.commonprefix([prompt_ids, ids])) for ids in whole)  # works on any sequences
    return prompt_ids[:split], [ids[split:] for ids in whole]


def read_response(record: dict, name: str) -> str | list[dict]:
    """A response: text, or a list of turns."""
    value = record.get(name)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        return read_turns(value, name)
    if name not in record:
        raise UserError(f"field '{name}' is missing (fields there: {', '.join(sorted(record)) or 'none'})")
    raise UserError(f"field '{name}' is {'empty' if value is None else 'neither text nor a list of turns'}")


def prompt_and_reference(chat: Chat, record: dict, tokenizer, prompt, response) -> dict:
    """A generation example: the prompt as the model sees it before answering, and the response as the reference
    (its assistant turns' text)."""
    if isinstance(prompt, str):
        return {"prompt": prompt, "prompt_ids": tokenizer(prompt)["input_ids"], "reference": response}
    text = chat.render_function(record, tokenizer)(prompt, True)
    reference = "\n".join(turn["content"] for turn in response if turn["role"] == "assistant")
    return {
        "prompt": text,
        "prompt_ids": tokenizer(text, add_special_tokens=False)["input_ids"],
        "reference": reference,
    }
