"""The data layer end to end: which tokens carry loss in every format, length rules, packing that is exact,
the quality report on planted problems, the tokenization cache, and every format on the real shared datasets."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import LABELS, SHARED_DATASETS, build_tiny_llama, instruction_rows, write_jsonl

from lightning_ft import FineTuneModule
from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.data import FineTuneDataModule
from lightning_ft.data.batching import PackedDataset, StepBatchSampler, WithStepTerms, collate, pack, padding_waste
from lightning_ft.data.formats import Chat, Classification, EncodeContext, Instruction, Text
from lightning_ft.data.formats.base import TokenRules, finish_example
from lightning_ft.data.quality import QualityRules
from lightning_ft.data.sources import read_records
from lightning_ft.data.splits import SplitSpec
from lightning_ft.errors import UserError
from lightning_ft.loading import load_tokenizer

SHORT = Instruction(template="{instruction} {input}\n", template_no_input="{instruction}\n")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def labelled_segments(tokenizer, example: dict) -> list[str]:
    """The decoded runs of tokens that carry a label."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


CONVERSATION = [
    ("system", "be brief"),
    ("user", "red cat"),
    ("assistant", "cat red"),
    ("user", "owl fox"),
    ("assistant", "fox owl"),
]


def test_every_format_puts_loss_on_exactly_the_right_tokens(tokenizer):
    ctx = EncodeContext(tokenizer, max_length=512)
    eos = tokenizer.eos_token

    text = Text().encode({"text": "red cat owl"}, ctx)
    assert labelled_segments(tokenizer, text) == [f"red cat owl{eos}"]

    record = {"instruction": "Reverse the words.", "input": "red cat owl", "output": "owl cat red"}
    instruction = Instruction().encode(record, ctx)
    assert labelled_segments(tokenizer, instruction) == [f"owl cat red{eos}"]
    assert tokenizer.decode(instruction["input_ids"]).startswith(Instruction().prompt(record))

    messages = {"messages": [{"role": r, "content": c} for r, c in CONVERSATION]}
    sharegpt = {
        "conversations": [
            {"from": {"user": "human", "assistant": "gpt"}.get(r, r), "value": c} for r, c in CONVERSATION
        ]
    }
    for record in (messages, sharegpt):
        chat = Chat().encode(record, ctx)
        assert labelled_segments(tokenizer, chat) == [f"cat red{eos}\n", f"fox owl{eos}\n"]
        assert "<|user|>\nred cat" in tokenizer.decode(chat["input_ids"])

    classified = Classification().encode({"text": "good cat", "label": "pos"}, EncodeContext(tokenizer, 64, LABELS))
    assert classified["labels"] == 1 and tokenizer.decode(classified["input_ids"]) == "good cat"

    everything = Instruction().encode(
        {"instruction": "Reverse.", "output": "owl"}, EncodeContext(tokenizer, 512, train_on_inputs=True)
    )
    assert everything["labels"] == everything["input_ids"]  # train_on_inputs: the prompt carries loss too


def test_tokenizer_chat_template_is_used_when_present(tokenizer):
    template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    chat = Chat(chat_template=template).encode(
        {"messages": [{"role": r, "content": c} for r, c in CONVERSATION]}, EncodeContext(tokenizer, 512)
    )
    assert tokenizer.decode(chat["input_ids"]).startswith("system: be brief\nuser: red cat\nassistant: cat red")
    assert labelled_segments(tokenizer, chat) == [f"cat red{tokenizer.eos_token}\n", f"fox owl{tokenizer.eos_token}\n"]


def test_missing_field_names_the_field_and_the_fields_there(tokenizer):
    with pytest.raises(UserError, match=r"field 'output' is missing \(fields there: input, instruction\)"):
        Instruction().encode({"instruction": "a", "input": "b"}, EncodeContext(tokenizer, 64))


@pytest.mark.parametrize(
    "rules,expected",
    [
        (TokenRules(4, "truncate", "right"), ([1, 2, 3, 4], "truncated")),
        (TokenRules(4, "truncate", "left"), ([3, 4, 5, 6], "truncated")),
        (TokenRules(4, "drop"), (None, "overlong_dropped")),
        (TokenRules(8), ([1, 2, 3, 4, 5, 6], "kept")),
        (TokenRules(8, min_length=7), (None, "too_short")),
    ],
)
def test_length_rules(rules, expected):
    example, status = finish_example({"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, 3, 4, 5, 6]}, rules)
    assert ((example or {}).get("input_ids"), status) == expected


def test_examples_without_label_tokens_are_dropped():
    assert finish_example({"input_ids": [1, 2, 3, 4], "labels": [-100, -100, -100, 4]}, TokenRules(2)) == (
        None,
        "no_label_tokens",
    )


def test_pack_places_every_example_once_within_max_length():
    lengths = [7, 3, 9, 1, 5, 5, 2, 8, 4, 6] * 5
    rows = pack(lengths, max_length=16, seed=0)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 16 for row in rows)
    assert len(rows) == -(-sum(lengths) // 16)  # here best fit, longest first, reaches the lower bound
    assert pack(lengths, 16, seed=0) == rows and pack(lengths, 16, seed=1) != rows  # the seed orders ties


def test_packed_batch_losses_equal_unpacked(tiny_model, tokenizer):
    """Per-example losses of one packed row equal each example's loss computed alone (fp32, within 1e-4)."""
    ctx = EncodeContext(tokenizer, 512)
    examples = [Instruction().encode(record, ctx) for record in instruction_rows(5, seed=7)]
    module = FineTuneModule(str(tiny_model))
    module.configure_model()
    module.eval()

    def token_losses(batch):
        logits = module(**batch)[:, :-1]
        return F.cross_entropy(
            logits.transpose(1, 2), batch["labels"][:, 1:], reduction="none", ignore_index=IGNORE_INDEX
        )

    with torch.no_grad():
        alone = [token_losses(collate([e], tokenizer.pad_token_id))[0].sum().item() for e in examples]
        row = PackedDataset(examples, [list(range(len(examples)))])[0]
        packed = token_losses(collate([row], tokenizer.pad_token_id, pad_to_multiple_of=64))[0]
    start = 0
    for example, expected in zip(examples, alone):
        end = start + len(example["input_ids"])
        assert packed[start : end - 1].sum().item() == pytest.approx(expected, abs=1e-4)
        start = end


def test_collate_pads_and_packed_rows_get_positions_not_masks():
    padded = collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_token_id=0,
        pad_to_multiple_of=4,
    )
    assert padded["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert padded["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    row = PackedDataset(
        [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}], [[0, 1]]
    )[0]
    packed = collate([row], pad_token_id=0, pad_to_multiple_of=8)
    assert "attention_mask" not in packed
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert packed["labels"].tolist() == [[-100, 2, 3, -100, 5, -100, -100, -100]]
    classes = collate([{"input_ids": [1, 2], "labels": 1}, {"input_ids": [3], "labels": 0}], pad_token_id=0)
    assert classes["labels"].tolist() == [1, 0]


def take_pass(sampler: StepBatchSampler) -> list:
    """What training does with a pass: take every batch (the DataModule counts them)."""
    batches = []
    for batch in sampler:
        batches.append(batch)
        sampler.taken += 1
    return batches


def test_the_batch_stream_depends_only_on_seed_and_batches_taken():
    terms = [1] * 50
    first, second = StepBatchSampler(terms, 5, seed=3), StepBatchSampler(terms, 5, seed=3)
    a = [take_pass(first), take_pass(first)]
    torch.rand(100)  # global RNG use must not matter
    assert [take_pass(second), take_pass(second)] == a
    assert a[0] != a[1] and sorted(i for batch in a[0] for i, _, _ in batch) == list(range(50))
    # A resume 3 batches into the second pass continues with its 4th batch, then the third pass.
    resumed = StepBatchSampler(terms, 5, seed=3, taken=len(a[0]) + 3)
    assert take_pass(resumed) == a[1][3:] and take_pass(resumed) == take_pass(first)
    # Resumed on another split (2 processes x batch 1 saved after 6 batches each: 12 examples), 1 process x batch 4
    # continues at example 12 of the same pass order.
    alone = StepBatchSampler(terms, 4, seed=3)
    alone.taken = alone.taken_in_this_split(6, world_size=2, batch_size=1)
    order = [i for batch in a[0] for i, _, _ in batch]
    assert [i for i, _, _ in next(iter(alone))] == order[12:16]
    # Batches fetched ahead but never taken (loader prefetch) do not move the stream.
    ahead = StepBatchSampler(terms, 5, seed=3)
    fetching = iter(ahead)
    next(fetching), next(fetching)
    assert take_pass(ahead) == a[0]


@pytest.mark.parametrize("batch_size,accumulate,world_size", [(4, 1, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2)])
def test_every_split_of_a_step_sees_the_same_examples_and_token_total(batch_size, accumulate, world_size):
    """4 examples per optimizer step, however split: the same examples, and every batch knows their total."""
    terms = [3, 9, 1, 7, 4, 4, 2, 8, 5, 6, 1, 2]
    steps = []
    for rank in range(world_size):
        sampler = StepBatchSampler(terms, batch_size, seed=0, accumulate=accumulate, world_size=world_size, rank=rank)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        per_step = len(batches) // 3
        for step in range(3):
            chunk = [pair for batch in batches[step * per_step : (step + 1) * per_step] for pair in batch]
            steps.append((step, rank, chunk))
    by_step = {}
    for step, _, chunk in steps:
        by_step.setdefault(step, []).extend(chunk)
    reference = StepBatchSampler(terms, 4, seed=0)
    for step, batch in enumerate(reference):
        assert sorted(i for i, _, real in by_step[step] if real) == sorted(i for i, _, _ in batch)
        assert {total for _, total, _ in by_step[step]} == {sum(terms[i] for i, _, _ in batch)}


def test_uneven_passes_are_padded_with_batches_that_carry_no_loss():
    """5 batches over 2 processes: the 6th is a copy without labels, and the last step's total counts it not."""
    terms = [2, 3, 4, 5, 6]
    ranks = [list(StepBatchSampler(terms, 1, seed=0, world_size=2, rank=rank)) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    padding = [pair for batch in ranks[0] + ranks[1] for pair in batch if not pair[2]]
    assert len(padding) == 1
    last_step_real = [pair for rank in ranks for pair in rank[2] if pair[2]]
    assert padding[0][1] == sum(terms[i] for i, _, _ in last_step_real)
    data = WithStepTerms([{"input_ids": [1, 2], "labels": [1, 2]}])
    assert data[(0, 7, False)]["labels"] == [IGNORE_INDEX, IGNORE_INDEX] and data[(0, 7, True)]["labels"] == [1, 2]


def test_padding_waste_ranks_the_batching_modes():
    lengths = [20, 200, 35, 480, 90, 60, 300, 15, 120, 75] * 20
    waste = padding_waste(lengths, batch_size=8, max_length=512, seed=0)
    assert waste["pad_to_max_length"] > waste["dynamic"] > waste["group_by_length"]
    assert waste["pack"] < 0.05


def datamodule(tiny_model, train, **kwargs) -> FineTuneDataModule:
    kwargs.setdefault("format", SHORT)
    return FineTuneDataModule(train_path=str(train), tokenizer=str(tiny_model), **kwargs)


def test_quality_report_counts_planted_problems(tiny_model, tmp_path):
    base = instruction_rows(12, seed=11)
    sentence = "the quick brown fox jumps over the lazy dog near the river bank today"
    planted = [
        dict(base[0]),  # exact duplicate of row 0
        {"instruction": "Summarise.", "output": sentence + " again"},
        {"instruction": "Summarise.", "output": sentence + " again!"},  # near duplicate of the one above
        {"instruction": "Mail me at jane.doe@example.com", "output": "card 4111 1111 1111 1111 noted"},
        {"instruction": "Empty answer.", "output": "   "},  # dropped as empty
        dict(base[5]),  # also in val: a leak
    ]
    train = write_jsonl(tmp_path / "train.jsonl", base + planted)
    val = write_jsonl(tmp_path / "val.jsonl", [base[5], *instruction_rows(3, seed=12)])
    dm = datamodule(tiny_model, train, val_path=str(val), quality=QualityRules(near_dedup=True, scrub_pii=True))
    dm.setup("fit")
    train_report = dm.report["train"]
    assert train_report["records"] == 18
    dropped = train_report["quality"]["dropped"]
    # base[5] appears twice in train (one copy is an exact duplicate) and once in val: one dedup + one leak.
    assert (dropped["exact_dedup"], dropped["near_dedup"], dropped["drop_empty"], dropped["leakage"]) == (2, 1, 1, 1)
    assert train_report["quality"]["pii"] == {"EMAIL": 1, "CREDIT_CARD": 1}
    assert train_report["examples"] == 18 - 5 == len(dm.datasets["train"])
    decoded = [dm.get_tokenizer().decode(ids) for ids in dm.datasets["train"]["input_ids"]]
    assert any("<EMAIL>" in text and "<CREDIT_CARD>" in text for text in decoded)


def test_second_setup_reads_the_cache_without_tokenizing(tiny_model, data_dir, monkeypatch):
    calls = []
    original = Instruction.encode
    monkeypatch.setattr(Instruction, "encode", lambda self, record, ctx: calls.append(1) or original(self, record, ctx))
    first = datamodule(tiny_model, data_dir / "train.jsonl", max_length=99)
    first.setup("fit")
    assert len(calls) == 32
    second = datamodule(tiny_model, data_dir / "train.jsonl", max_length=99)
    second.setup("fit")
    assert len(calls) == 32, "the second setup tokenized again"
    assert second.datasets["train"]["input_ids"] == first.datasets["train"]["input_ids"]
    datamodule(tiny_model, data_dir / "train.jsonl", max_length=98).setup("fit")  # another setting: a new key
    assert len(calls) == 64


def test_tokenizing_in_several_processes_gives_the_same_data(tiny_model, data_dir, tmp_path):
    one = datamodule(tiny_model, data_dir / "train.jsonl", num_proc=1, cache_dir=str(tmp_path / "a"))
    two = datamodule(tiny_model, data_dir / "train.jsonl", num_proc=2, cache_dir=str(tmp_path / "b"))
    one.setup("fit")
    two.setup("fit")
    assert one.datasets["train"]["input_ids"] == two.datasets["train"]["input_ids"]
    assert one.datasets["train"]["labels"] == two.datasets["train"]["labels"]


def test_no_label_examples_are_dropped_and_warned(tiny_model, tmp_path):
    rows = [{"instruction": "word " * 40, "output": "x"}, {"instruction": "Hi", "output": "there"}]
    dm = datamodule(tiny_model, write_jsonl(tmp_path / "t.jsonl", rows), max_length=16)
    with pytest.warns(UserWarning, match="dropped 1 examples with no label token"):
        dm.setup("fit")
    assert dm.report["train"]["tokens"]["no_label_tokens"] == 1 and len(dm.datasets["train"]) == 1


def test_empty_after_filtering_says_which_rule(tiny_model, tmp_path):
    rows = [{"instruction": "a", "output": ""}, {"instruction": "b", "output": " "}]
    with pytest.raises(UserError, match="drop_empty removed 2"):
        datamodule(tiny_model, write_jsonl(tmp_path / "t.jsonl", rows)).setup("fit")


def test_label_outside_the_set_names_file_and_line(tiny_model, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "good", "label": "pos"}, {"text": "hm", "label": "meh"}])
    dm = datamodule(tiny_model, path, format="classification", labels=LABELS)
    with pytest.raises(UserError, match=rf"{path}:2: field 'label': 'meh' is not one of --model.labels"):
        dm.setup("fit")


def test_splits_carved_from_one_file(tiny_model, data_dir):
    dm = datamodule(
        tiny_model,
        data_dir / "cls_train.jsonl",
        format="classification",
        labels=LABELS,
        split=SplitSpec(val_fraction=0.25, stratify_by="label"),
    )
    dm.setup("fit")
    assert dm.report["val"]["records"] == 8 and dm.report["train"]["records"] == 24
    assert dm.report["val"]["labels"] == {"neg": 4, "pos": 4}  # before dedup: the split itself is stratified
    dropped = sum(sum(dm.report[name]["quality"]["dropped"].values()) for name in ("train", "val"))
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 32 - dropped


def test_batching_modes_serve_the_same_examples(tiny_model, data_dir):
    seen = {}
    for batching in ("pad", "group_by_length", "pack"):
        dm = datamodule(tiny_model, data_dir / "train.jsonl", batching=batching, batch_size=4, max_length=128)
        dm.setup("fit")
        tokens = []
        for batch in dm.train_dataloader():
            tokens += batch["input_ids"][batch["labels"] != IGNORE_INDEX].tolist()
        seen[batching] = sorted(tokens)
    # Packing drops the (never predicted) first token's label of each example; all three serve the same targets.
    assert seen["pad"] == seen["group_by_length"] == seen["pack"]


REAL = [
    ("alpaca_gpt4_en_demo/alpaca_en_demo.json", "instruction", {}),
    ("code_alpaca_2k/code_alpaca_2k.json", "instruction", {}),
    (
        "scitldr_a/train.jsonl",
        Instruction(
            instruction_field="source",
            output_field="target",
            template_no_input="Summarise in one sentence:\n{instruction}\nTLDR: ",
        ),
        {},
    ),
    ("hh_rlhf_harmless_base_test/test.chosen.messages.jsonl", "chat", {}),
    ("glaive_toolcall_en_demo/glaive_toolcall_en_demo.json", "chat", {}),
    (
        {"neg": "rt_polarity/rt-polarity.neg", "pos": "rt_polarity/rt-polarity.pos"},
        "classification",
        {"labels": LABELS},
    ),
]


@pytest.fixture(scope="module")
def real_tokenizer(tmp_path_factory) -> str:
    """A BPE tokenizer (8k tokens) trained on a sample of every real set, so lengths are realistic."""
    texts = []
    for source, _, _ in REAL:
        texts += [json.dumps(record) for _, record in read_records(shared_path(source), "--data.train_path")[:600]]
    return str(build_tiny_llama(tmp_path_factory.mktemp("real") / "model", texts, vocab_size=8000))


def shared_path(source):
    if isinstance(source, dict):
        return {label: str(SHARED_DATASETS / name) for label, name in source.items()}
    return str(SHARED_DATASETS / source)


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets is not on this machine")
@pytest.mark.parametrize(
    "source,fmt,extra", REAL, ids=["alpaca", "code_alpaca", "scitldr", "hh_rlhf", "glaive", "rt_polarity"]
)
def test_real_datasets(real_tokenizer, source, fmt, extra):
    path = shared_path(source)
    dm = FineTuneDataModule(fmt, path, tokenizer=real_tokenizer, max_length=1024, batch_size=8, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")
    report = dm.report["train"]
    assert report["examples"] > 0.85 * report["records"]  # real sets hold duplicates (glaive: 35 of 300)
    first = dm.datasets["train"][0]
    if dm.format.task == "causal_lm":
        assert any(label != IGNORE_INDEX for label in first["labels"])
        assert report["lengths"]["max"] <= 1024
    else:
        assert sum(report["labels"].values()) == report["records"] == 10662
    batches = list(dm.train_dataloader())
    if dm.batching == "pack":  # 8 examples a batch on average, in fewer, fuller rows
        examples = sum(len(batch["example_ids"]) for batch in batches)
        per_row = examples / sum(batch["input_ids"].shape[0] for batch in batches)
        assert examples == report["examples"] and abs(examples / len(batches) - 8) <= per_row / 2 + 0.5  # whole rows
        assert batches[0]["input_ids"].shape[0] < 8
    else:
        assert batches[0]["input_ids"].shape[0] == 8


def test_data_command_prints_and_writes_the_report(cli, tiny_model, data_dir, tmp_path, capsys):
    output = tmp_path / "report.json"
    args = [
        "data",
        "--model.model_name_or_path",
        str(tiny_model),
        "--data.train_path",
        str(data_dir / "train.jsonl"),
        "--data.val_path",
        str(data_dir / "val.jsonl"),
        "--output",
        str(output),
    ]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "rows per rule" in printed and "padding waste" in printed
    report = json.loads(output.read_text())
    assert report["train"]["records"] == 32 and report["val"]["records"] == 8
    assert set(report["train"]["padding_waste"]) == {"pad_to_max_length", "dynamic", "group_by_length", "pack"}


def test_a_cache_hit_reports_this_runs_source_and_batching(tiny_model, data_dir, tmp_path):
    """The same data at another path, batched otherwise, reads the cache and reports what a fresh build would."""
    elsewhere = tmp_path / "elsewhere.jsonl"
    shutil.copy(data_dir / "train.jsonl", elsewhere)
    cache = str(tmp_path / "cache")
    first = datamodule(tiny_model, data_dir / "train.jsonl", batch_size=2, batching="pad", cache_dir=cache)
    first.setup("fit")
    hit = datamodule(tiny_model, elsewhere, batch_size=8, batching="group_by_length", cache_dir=cache)
    hit.setup("fit")
    assert hit.cache.path == first.cache.path  # the same data and preprocessing: one cache entry
    fresh = datamodule(tiny_model, elsewhere, batch_size=8, batching="group_by_length", cache_dir=str(tmp_path / "b"))
    fresh.setup("fit")
    assert hit.report == fresh.report
    assert hit.report["train"]["source"] == str(elsewhere) and hit.report["batching"] == "group_by_length"
    assert hit.report["train"]["padding_waste"] != first.report["train"]["padding_waste"]
