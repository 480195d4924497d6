"""Chat data: OpenAI-style `messages` [{role, content}] or ShareGPT `conversations` [{from, value}].

The conversation is rendered with the tokenizer's chat template (or a built-in one), exactly as at inference,
and only the tokens of assistant turns carry loss: each turn's character span is found by rendering the
conversation up to that turn, and tokens are assigned to spans through the tokenizer's offsets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.data.formats.base import DataFormat, EncodeContext
from lightning_ft.errors import UserError

# For tokenizers without a chat template: role headers, EOS after each assistant turn so generation stops.
BUILTIN_TEMPLATE = (  # newlines as expressions: transformers renders templates with trim_blocks
    "{{ bos_token or '' }}"
    "{% if tools %}{{ '<|system|>\\nTools: ' + (tools | tojson) + '\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# ShareGPT speakers -> chat roles. A function call is the assistant's output; its result is tool input.
# The roles chat templates know; a turn with another one would be rendered (and trained on) as the template guesses.
KNOWN_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}


@dataclass
class Chat(DataFormat):
    """Multi-turn conversations; loss on every assistant turn and nowhere else.

    Args:
        messages_field: the field with the turns; None reads "messages" or, failing that, "conversations".
        chat_template: a Jinja chat template overriding the tokenizer's (the built-in one is used when the
            tokenizer has none).
        tools_field: a field with tool/function schemas (a list, or JSON text as in Glaive), passed to the template.
        trained_roles: roles whose turns carry loss.
    """

    task = "causal_lm"

    messages_field: str | None = None
    chat_template: str | None = None
    tools_field: str | None = "tools"
    trained_roles: list[str] = dataclass_field(default_factory=lambda: ["assistant"])

    def text_fields(self) -> list[str]:
        return [self.messages_field] if self.messages_field else ["messages", "conversations"]

    def either_fields(self) -> list[str]:
        return [] if self.messages_field else ["messages", "conversations"]

    def key_fields(self) -> list[str]:
        return [self.tools_field] if self.tools_field else []  # same turns with other tools: another example

    def messages(self, record: dict) -> list[dict]:
        """The turns as [{"role", "content"}], whichever of the two layouts the record uses."""
        name = self.messages_field or ("messages" if "messages" in record else "conversations")
        turns = record.get(name)
        if not isinstance(turns, list) or not turns:
            fields = ", ".join(sorted(record)) or "none"
            raise UserError(f"field '{name}' is missing or not a list of turns (fields there: {fields})")
        return read_turns(turns, name, self.trained_roles)

    def tools(self, record: dict):
        tools = record.get(self.tools_field) if self.tools_field else None
        if isinstance(tools, str):
            try:
                return json.loads(tools) if tools.strip() else None
            except json.JSONDecodeError as err:
                raise UserError(f"field '{self.tools_field}' is not JSON ({err.msg})") from err
        return tools or None

    def renderer(self, record: dict, tokenizer):
        """The record's turns, and a function rendering some of them as the model sees them."""
        return self.messages(record), self.render_function(record, tokenizer)

    def render_function(self, record: dict, tokenizer):
        """A function rendering turns as the model sees them, with the record's tools."""
        tools = self.tools(record)
        template = self.chat_template or tokenizer.chat_template or BUILTIN_TEMPLATE

        def render(turns: list[dict], generation_prompt: bool) -> str:
            return tokenizer.apply_chat_template(
                turns, chat_template=template, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
            )

        return render

    def prompt_record(self, request: list[dict] | str) -> dict:
        turns = [{"role": "user", "content": request}] if isinstance(request, str) else list(request)
        return {self.messages_field or "messages": [*turns, {"role": "assistant", "content": ""}]}

    def generation_example(self, record: dict, tokenizer) -> dict | None:
        """The conversation up to its last assistant turn (with the assistant header), and that turn."""
        messages, render = self.renderer(record, tokenizer)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            return None
        prompt = render(messages[:last], True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return {"prompt": prompt, "prompt_ids": ids, "reference": messages[last]["content"]}

    def encode(self, record: dict, ctx: EncodeContext) -> dict:
        tokenizer = ctx.tokenizer
        messages, render = self.renderer(record, tokenizer)

        text = render(messages, False)
        spans = []  # character spans of the trained turns, header excluded, end-of-turn marker included
        for index, message in enumerate(messages):
            if message["role"] in self.trained_roles or ctx.train_on_inputs:
                start = len(render(messages[:index], message["role"] == "assistant"))
                done = render(messages[: index + 1], False)
                if not text.startswith(done) or start > len(done):
                    raise UserError(
                        "the chat template does not render a conversation as the sum of its turns; "
                        "set --data.format.chat_template to one that does"
                    )
                spans.append((start, len(done)))
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = encoded["input_ids"]
        labels = [
            token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
            for token, (begin, _) in zip(input_ids, encoded["offset_mapping"])
        ]
        return {"input_ids": input_ids, "labels": labels}


def read_turns(turns: list, name: str, trained_roles=("assistant",)) -> list[dict]:
    """Turns of field `name` as [{"role", "content"}], from role/content or ShareGPT's from/value."""
    messages = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise UserError(
                f"field '{name}' turn {number}: expected an object with role and content, got "
                f"{type(turn).__name__} {json.dumps(turn)[:40]}"
            )
        role = turn.get("role") or SHAREGPT_ROLES.get(turn.get("from"), turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if not isinstance(role, str) or not isinstance(content, str):
            raise UserError(f"field '{name}' turn {number}: needs role/content or from/value text, got {turn}")
        if role not in KNOWN_ROLES and role not in trained_roles:
            raise UserError(
                f"field '{name}' turn {number}: unknown role '{role}' (known: {', '.join(KNOWN_ROLES)}; "
                "ShareGPT's human, gpt, function_call, observation)"
            )
        messages.append({"role": role, "content": content})
    return messages
