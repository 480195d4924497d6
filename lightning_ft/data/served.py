"""How training rendered prompts, kept with every checkpoint and export, so that a served request is rendered the same.

The commonest failure of a served fine-tune is a prompt the model never saw in training: another chat template, no
instruction template, other whitespace, no EOS. The data module records its format's settings and the normalisation
the quality rules applied (data/module.py puts them in each checkpoint, export copies them); serve renders every
request through the same format's `generation_example`, the path the training's generation samples took.
"""

from __future__ import annotations

import dataclasses
import importlib

from lightning_ft.data.formats import FORMATS, Chat, DataFormat, EncodeContext
from lightning_ft.data.quality import QualityRules, normalize_value
from lightning_ft.errors import UserError

DATAMODULE_STATE = "FineTuneDataModule"  # Lightning keeps a data module's state_dict in a checkpoint by class name


def prompt_settings(fmt: DataFormat, quality: QualityRules) -> dict:
    """What a checkpoint records: the format (class and settings) and the text normalisation of the quality rules."""
    cls = type(fmt)
    return {
        "format": {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dataclasses.asdict(fmt)},
        "normalize_unicode": quality.normalize_unicode,
        "normalize_whitespace": quality.normalize_whitespace,
    }


class TrainedPrompts:
    """Renders served requests (OpenAI messages, or a completion's prompt text) as training rendered prompts."""

    def __init__(self, settings: dict) -> None:
        spec = settings["format"]
        module, _, name = spec["class_path"].rpartition(".")
        known = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in FORMATS.values()}
        cls = known.get(spec["class_path"]) or getattr(importlib.import_module(module), name)
        self.format: DataFormat = cls(**spec["init_args"])
        self.rules = QualityRules(
            normalize_unicode=settings["normalize_unicode"], normalize_whitespace=settings["normalize_whitespace"]
        )
        self.settings = settings

    def ids(self, request: list[dict] | str, tokenizer) -> list[int]:
        """The prompt's token ids; a UserError (a 400 for the server) when this format has no prompt of that kind."""
        record = self.format.prompt_record(request)
        if record is None:  # trained on raw text: a completion's prompt is the text itself
            if isinstance(request, str):
                return tokenizer(request)["input_ids"]
            raise UserError(
                f"this model was trained on {type(self.format).__name__.lower()} data, not on prompts: "
                "send raw text to /v1/completions"
            )
        joined = set(self.format.joined_fields())
        record = {key: normalize_value(value, self.rules, keep_ends=key in joined) for key, value in record.items()}
        if self.format.task == "sequence_classification":  # the whole (untruncated) input: serve checks its length
            return self.format.encode(record, EncodeContext(tokenizer, max_length=10**9, num_labels=1))["input_ids"]
        example = self.format.generation_example(record, tokenizer)
        if example is None:
            raise UserError(f"the {type(self.format).__name__} format renders no prompt for this request")
        return list(example["prompt_ids"])

    def turn_end_ids(self, tokenizer) -> set[int]:
        """The special token the chat template puts after an assistant's answer (none for other formats: their
        answers end with EOS), where a served answer must stop as the trained one did."""
        chat = self.format if isinstance(self.format, Chat) else getattr(self.format, "chat", None)
        if not isinstance(chat, Chat):
            return set()
        render = chat.render_function({}, tokenizer)
        asked = [{"role": "user", "content": "?"}]
        prompt, whole = render(asked, True), render([*asked, {"role": "assistant", "content": "!"}], False)
        after = whole[len(prompt) :].partition("!")[2] if whole.startswith(prompt) else ""
        ids = tokenizer(after, add_special_tokens=False)["input_ids"]
        return set(ids[:1]) & set(tokenizer.all_special_ids)
