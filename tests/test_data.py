"""The minimal data path: response-only loss masks, labels, padding, reproducible shuffles, file errors."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.data import FineTuneDataModule
from lightning_ft.data.collate import pad_collate
from lightning_ft.data.formats import Classification, EncodeContext, Instruction
from lightning_ft.data.module import EpochSeededSampler
from lightning_ft.errors import UserError
from lightning_ft.loading import load_tokenizer

from conftest import LABELS, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def test_instruction_loss_falls_on_the_response_and_eos_only(tokenizer):
    record = {"instruction": "Reverse the words.", "input": "red cat owl", "output": "owl cat red"}
    fmt = Instruction()
    example = fmt.encode(record, EncodeContext(tokenizer, max_length=512))
    prompt_ids = tokenizer(fmt.prompt(record))["input_ids"]
    response = [t for t in example["labels"] if t != IGNORE_INDEX]

    assert example["input_ids"][: len(prompt_ids)] == prompt_ids
    assert example["labels"][: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert response == example["input_ids"][len(prompt_ids):]
    assert tokenizer.decode(response[:-1]) == "owl cat red" and response[-1] == tokenizer.eos_token_id
    assert "### Input:\nred cat owl" in fmt.prompt(record)
    assert "### Input" not in fmt.prompt({"instruction": "Say hi.", "output": "hi"})  # no-input template


def test_instruction_custom_fields_and_template(tokenizer):
    fmt = Instruction(instruction_field="q", output_field="a", template_no_input="Q: {instruction}\nA: ")
    example = fmt.encode({"q": "red?", "a": "cat"}, EncodeContext(tokenizer, max_length=512))
    assert tokenizer.decode(example["input_ids"]).startswith("Q: red?\nA: cat")


def test_truncation_keeps_the_prompt_mask(tokenizer):
    record = {"instruction": "Reverse the words.", "input": "red cat owl", "output": "owl cat red " * 20}
    example = Instruction().encode(record, EncodeContext(tokenizer, max_length=40))
    assert len(example["input_ids"]) == len(example["labels"]) == 40


def test_examples_whose_prompt_fills_max_length_are_dropped_and_reported(tmp_path, tiny_model, recwarn):
    rows = [{"instruction": "Reverse the words " * 30, "output": "x"}, {"instruction": "Hi", "output": "there"}]
    short = Instruction(template_no_input="{instruction}\n")
    datamodule = FineTuneDataModule(short, str(write_jsonl(tmp_path / "t.jsonl", rows)),
                                    tokenizer=str(tiny_model), max_length=32)
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 1
    assert any("dropped 1 examples" in str(w.message) for w in recwarn)


def test_classification_labels_by_name_or_id(tokenizer):
    fmt = Classification()
    ctx = EncodeContext(tokenizer, max_length=16, labels=LABELS)
    assert fmt.encode({"text": "good cat", "label": "pos"}, ctx)["labels"] == 1
    assert fmt.encode({"text": "bad cat", "label": 0}, ctx)["labels"] == 0
    with pytest.raises(UserError, match="'meh' is not one of --model.labels"):
        fmt.encode({"text": "x", "label": "meh"}, ctx)
    with pytest.raises(UserError, match=r"5 is not a class id in \[0, 3\)"):
        fmt.encode({"text": "x", "label": 5}, EncodeContext(tokenizer, max_length=16, num_labels=3))
    pair = Classification(text_pair_field="hypothesis").encode(
        {"text": "a cat", "hypothesis": "an animal", "label": 1}, EncodeContext(tokenizer, 64, num_labels=2))
    assert len(pair["input_ids"]) > len(tokenizer("a cat")["input_ids"])


def test_collate_pads_tokens_and_labels():
    batch = pad_collate([{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
                         {"input_ids": [8], "labels": [8]}], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    classes = pad_collate([{"input_ids": [1, 2], "labels": 1}, {"input_ids": [3], "labels": 0}], pad_token_id=0)
    assert classes["labels"].tolist() == [1, 0]


def test_shuffle_depends_only_on_seed_and_pass():
    data = list(range(50))
    first, second = EpochSeededSampler(data, seed=3), EpochSeededSampler(data, seed=3)
    a = [list(first), list(first)]
    torch.rand(100)  # global RNG use must not matter
    assert [list(second), list(second)] == a
    assert a[0] != a[1] and sorted(a[0]) == data
    assert list(EpochSeededSampler(data, seed=3, passes=1)) == a[1]  # what a resumed run continues with


def test_bad_json_names_file_and_line(tmp_path, tiny_model):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n{not json\n")
    datamodule = FineTuneDataModule("instruction", str(path), tokenizer=str(tiny_model))
    with pytest.raises(UserError, match=rf"{path}:2: invalid JSON"):
        datamodule.setup("fit")


def test_json_array_files_are_read(tmp_path, tiny_model):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]))
    datamodule = FineTuneDataModule("instruction", str(path), tokenizer=str(tiny_model))
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 2


def test_unsupported_or_missing_files_fail_at_construction(tmp_path):
    with pytest.raises(UserError, match=r"--data.val_path .*data.xml: unsupported file type"):
        FineTuneDataModule("instruction", val_path=str(tmp_path / "data.xml"))
    with pytest.raises(UserError, match=r"--data.test_path .*gone.jsonl: no such file"):
        FineTuneDataModule("instruction", test_path=str(tmp_path / "gone.jsonl"))
