"""Preference data: pairs tokenize as TRL's DPOTrainer tokenizes them (plain text and conversations), in the three
shapes users have; each pair is one example of two sequences, batched one sequence a row or packed many pairs a
row; bad pairs are one line or counted."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATASETS, write_jsonl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_ft import FineTuneDataModule
from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.data.batching import PackedDataset, collate
from lightning_ft.data.formats import EncodeContext, Preference, TokenRules
from lightning_ft.data.formats.chat import BUILTIN_TEMPLATE
from lightning_ft.errors import UserError

TURNS = [{"role": "user", "content": "Reverse: red cat"}, {"role": "assistant", "content": "cat red"}]


def conversation(*turns: str) -> list[dict]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


def trl_tokenized(tiny_model, rows: list[dict]) -> list[dict]:
    """What TRL's DPOTrainer makes of the rows: prompt_ids, chosen_ids, rejected_ids."""
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = BUILTIN_TEMPLATE  # the template lightning-ft renders with when a tokenizer has none
    args = DPOConfig(output_dir="unused", report_to=[], max_length=None, use_cpu=True, bf16=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return [{key: row[key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in trainer.train_dataset]


def test_pairs_tokenize_as_trls_dpo_trainer(tiny_model, data_dir):
    plain = [json.loads(line) for line in (data_dir / "pref_train.jsonl").read_text().splitlines()[:4]]
    answers = [{"prompt": conversation("hi", "hello", "Reverse: red cat"), "chosen": "cat red", "rejected": "red cat"}]
    turns = [{"prompt": conversation("Reverse: a b"), "chosen": [TURNS[1]], "rejected": [{**TURNS[1], "content": "x"}]}]
    whole = [{"chosen": conversation("Reverse: a b", "b a"), "rejected": conversation("Reverse: a b", "a b")}]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    context = EncodeContext(tokenizer, max_length=512)
    # TRL takes a conversation's responses as turns only (it appends them to the prompt's list of turns)
    as_trl = [
        {**row, **{k: [{"role": "assistant", "content": row[k]}] for k in ("chosen", "rejected")}} for row in answers
    ]
    assert [Preference().encode(row, context) for row in answers] == trl_tokenized(tiny_model, as_trl)
    for rows in (plain, turns, whole):
        ours = [Preference().encode(row, context) for row in rows]
        assert ours == trl_tokenized(tiny_model, rows)


def test_the_quality_rules_keep_the_whitespace_where_prompt_and_response_join(tiny_model, data_dir, tmp_path):
    """The pipeline's tokens are TRL's too: the whitespace rule used to strip " red cat" to "red cat", and
    "Answer:" + "red cat" tokenizes otherwise than the pair as written."""
    rows = [json.loads(line) for line in (data_dir / "pref_train.jsonl").read_text().splitlines()[:4]]
    dm = datamodule(tiny_model, tmp_path, rows)
    dm.setup("fit")
    for example, trl in zip(dm.datasets["train"], trl_tokenized(tiny_model, rows)):
        chosen = [token for token, number in zip(example["input_ids"], example["sequence"]) if number == 0]
        assert chosen == trl["prompt_ids"] + trl["chosen_ids"]


def test_a_pair_is_two_sequences_each_with_its_own_positions_and_response_labels():
    rules = TokenRules(max_length=16)
    example, status = Preference().finish({"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}, rules)
    assert status == "kept"
    assert example["input_ids"] == [1, 2, 3, 4, 5, 1, 2, 3, 6]
    assert example["labels"] == [IGNORE_INDEX] * 3 + [4, 5] + [IGNORE_INDEX] * 3 + [6]
    assert example["sequence"] == [0] * 5 + [1] * 4

    # Too long: the prompt loses tokens from the left first; a response is cut only when it alone does not fit.
    long = {"prompt_ids": list(range(10, 20)), "chosen_ids": [4, 5, 6], "rejected_ids": [7]}
    example, status = Preference().finish(long, TokenRules(max_length=6))
    assert status == "truncated" and example["input_ids"][:6] == [17, 18, 19, 4, 5, 6]
    too_long = {"prompt_ids": [1, 2], "chosen_ids": [4, 5, 6, 7, 8], "rejected_ids": [9]}
    assert Preference().finish(too_long, TokenRules(max_length=4, overlong="drop")) == (None, "overlong_dropped")
    example, status = Preference().finish(too_long, TokenRules(max_length=4))
    assert status == "truncated" and example["input_ids"] == [2, 4, 5, 6, 2, 9]
    same = {"prompt_ids": [1], "chosen_ids": [4, 2], "rejected_ids": [4, 2]}
    assert Preference().finish(same, rules) == (None, "identical_pair")


def test_unpacked_pairs_are_trls_layout_and_packed_pairs_share_rows():
    pairs = [
        {"input_ids": [1, 2, 3, 1, 4], "labels": [-100, -100, 3, -100, 4], "sequence": [0, 0, 0, 1, 1]},
        {"input_ids": [1, 5, 1, 6, 7], "labels": [-100, 5, -100, 6, 7], "sequence": [0, 0, 1, 1, 1]},
    ]
    rows = collate(pairs, pad_token_id=0)
    assert rows["input_ids"].tolist() == [[1, 2, 3], [1, 5, 0], [1, 4, 0], [1, 6, 7]]  # chosen, chosen, rejected...
    assert rows["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert rows["sequence_ids"].tolist() == [[0, 0, 0], [2, 2, -1], [1, 1, -1], [3, 3, 3]]

    packed = collate([PackedDataset(pairs, [[0, 1]])[0]], pad_token_id=0, pad_to_multiple_of=12)
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, 12)
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 0, 1, 2, 0, 1]]
    assert sorted(set(packed["sequence_ids"][0].tolist())) == [-1, 0, 1, 2, 3]
    assert packed["labels"][0].tolist().count(IGNORE_INDEX) == 12 - 5  # each sequence's first token, and padding


def datamodule(tiny_model, tmp_path, rows: list[dict], **kwargs) -> FineTuneDataModule:
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    kwargs = {"cache_dir": str(tmp_path / "cache"), "max_length": 64, **kwargs}
    return FineTuneDataModule("preference", str(train), tokenizer=str(tiny_model), **kwargs)


def test_the_data_report_counts_pairs_and_what_each_rule_did(tiny_model, data_dir, tmp_path):
    rows = [json.loads(line) for line in (data_dir / "pref_train.jsonl").read_text().splitlines()]
    rows += [rows[0], {**rows[1], "rejected": rows[1]["chosen"]}]  # a duplicate pair, and a pair of equals
    dm = datamodule(tiny_model, tmp_path, rows, batching="pad")
    dm.setup("fit")
    train = dm.report["train"]
    assert dm.report["unit"] == "pairs" and train["records"] == 34 and train["examples"] == 32
    assert train["quality"]["dropped"]["exact_dedup"] == 1 and train["tokens"]["identical_pair"] == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 16 and int(batch["step_terms"]) == 8  # a pair's two rows; 8 pairs a step


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "Q", "chosen": "a"},
            r"pairs\.jsonl:2: field 'rejected' is missing",
        ),
        (
            {"chosen": conversation("hi", "a"), "rejected": conversation("ho", "b")},
            r"pairs\.jsonl:2: fields 'chosen' and 'rejected' share no prompt",
        ),
        ({"chosen": "a", "rejected": "b"}, r"pairs\.jsonl:2: field 'prompt' is missing \(only two whole"),
        ({"prompt": "Q", "chosen": TURNS, "rejected": "b"}, r"pairs\.jsonl:2: field 'chosen' is a list of turns"),
    ],
    ids=["no-rejected", "no-shared-prefix", "no-prompt", "mixed-shapes"],
)
def test_a_bad_pair_is_one_line_naming_the_file_line_and_field(tiny_model, tmp_path, row, message):
    good = {"prompt": "Q", "chosen": "a", "rejected": "b"}
    with pytest.raises(UserError, match=message):
        datamodule(tiny_model, tmp_path, [good, row]).setup("fit")


@pytest.mark.skipif(not (SHARED_DATASETS / "hh_rlhf_harmless_base_test").is_dir(), reason="needs ../shared/datasets")
def test_hh_rlhf_conversations_read_as_pairs(tiny_model, tmp_path):
    rows = [json.loads(line) for line in (SHARED_DATASETS / "hh_rlhf_harmless_base_test/test.preference.jsonl").open()]
    dm = datamodule(tiny_model, tmp_path, rows[:50], max_length=2048)
    dm.setup("fit")
    assert dm.report["train"]["examples"] + sum(dm.report["train"]["quality"]["dropped"].values()) <= 50
    example = dm.datasets["train"][0]
    assert set(example["sequence"]) == {0, 1} and any(label != IGNORE_INDEX for label in example["labels"])
    chosen = [token for token, number in zip(example["input_ids"], example["sequence"]) if number == 0]
    tokenizer = dm.get_tokenizer()
    assert tokenizer.decode(chosen).startswith(
        f"{tokenizer.bos_token}<|user|>\n"
    )  # rendered as chat fine-tuning renders it


def test_unpaired_feedback_holds_each_completion_and_the_previous_records_after_its_prompt(tiny_model, tmp_path):
    rows = [
        {"prompt": "Q1", "completion": " a", "label": True},
        {"prompt": "Q2", "completion": " b", "label": "false"},
        {"prompt": "Q3", "completion": " c", "label": 1},
    ]
    train = write_jsonl(tmp_path / "feedback.jsonl", rows)
    dm = FineTuneDataModule("unpaired", str(train), tokenizer=str(tiny_model), cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    tokenizer = dm.get_tokenizer()
    assert dm.report["unit"] == "completions" and dm.report["train"]["examples"] == 3

    def text(example, number):
        return tokenizer.decode([t for t, s in zip(example["input_ids"], example["sequence"]) if s == number])

    examples = [dm.datasets["train"][i] for i in range(3)]
    assert [e["desirable"] for e in examples] == [1, 0, 1]
    eos = tokenizer.eos_token
    assert [text(e, 0) for e in examples] == [f"Q1 a{eos}", f"Q2 b{eos}", f"Q3 c{eos}"]
    assert [text(e, 1) for e in examples] == [f"Q1 c{eos}", f"Q2 a{eos}", f"Q3 b{eos}"]  # the first takes the last's
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["desirable"].tolist()) == [False, True, True]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "Q", "completion": "a", "label": "maybe"},
            r"feedback\.jsonl:3: field 'label' must be true or false",
        ),
        ({"prompt": "Q", "completion": "a"}, r"feedback\.jsonl:3: field 'label' is missing"),
        ({"prompt": "Q", "completion": None, "label": True}, r"feedback\.jsonl:3: field 'completion' is null"),
    ],
    ids=["bad-label", "no-label", "null-completion"],
)
def test_bad_feedback_is_one_line_naming_its_own_line(tiny_model, tmp_path, row, message):
    """Named by its own line, though the first record reads the last one's completion before the last is read."""
    good = [{"prompt": "Q1", "completion": "a", "label": True}, {"prompt": "Q2", "completion": "b", "label": False}]
    train = write_jsonl(tmp_path / "feedback.jsonl", [*good, row])
    with pytest.raises(UserError, match=message):
        FineTuneDataModule("unpaired", str(train), tokenizer=str(tiny_model), cache_dir=str(tmp_path)).setup("fit")
