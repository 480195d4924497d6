"""What a record must hold, and every text the model sees going through every quality rule (issue 16: 1, 5, 11,
14, 15): a missing field is an error naming file, line and field; optional fields are scrubbed, deduplicated and
checked for leakage too; a bad chat turn, role or template placeholder is one clear line."""

from __future__ import annotations

import pytest
from conftest import write_jsonl

from lightning_ft.data import FineTuneDataModule
from lightning_ft.data.formats import Classification, Instruction
from lightning_ft.data.quality import QualityRules
from lightning_ft.errors import UserError

ALPACA = {"instruction": "Say it.", "input": "abc", "output": "ok"}


def setup(tiny_model, tmp_path, rows, fmt="instruction", **kwargs) -> FineTuneDataModule:
    tmp_path.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    dm = FineTuneDataModule(fmt, str(train), tokenizer=str(tiny_model), max_length=512, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(
    ("fmt", "good", "bad", "message"),
    [
        ("instruction", ALPACA, {"instruction": "Say it.", "input": "abc"}, "field 'output' is missing"),
        ("instruction", ALPACA, {**ALPACA, "output": None}, "field 'output' is null"),
        ("chat", {"messages": [{"role": "user", "content": "hi"}]}, {"id": 3}, "field 'messages' is missing"),
        (
            Classification(label_field="label"),
            {"text": "good", "label": 0},
            {"text": "bad"},
            "field 'label' is missing",
        ),
        (
            Classification(text_pair_field="hypothesis"),
            {"text": "a", "hypothesis": "b", "label": 1},
            {"text": "a", "label": 1},
            "field 'hypothesis' is missing",
        ),
    ],
    ids=["instruction", "instruction-null", "chat", "classification", "text-pair"],
)
def test_a_missing_field_is_an_error_naming_file_line_and_field(tiny_model, tmp_path, fmt, good, bad, message):
    """drop_empty is on (the default): a missing or null field is a schema error, not a silent drop."""
    kwargs = {"num_labels": 2} if isinstance(fmt, Classification) else {}
    with pytest.raises(UserError, match=rf"train\.jsonl:4: {message} \(fields there: "):
        setup(tiny_model, tmp_path, [good, good, good, bad], fmt, **kwargs)


def test_an_empty_output_is_what_drop_empty_counts(tiny_model, tmp_path):
    dm = setup(tiny_model, tmp_path, [ALPACA, {**ALPACA, "output": " "}, {**ALPACA, "input": "other"}])
    assert dm.report["train"]["quality"]["dropped"]["drop_empty"] == 1


def test_the_cli_says_which_line_lacks_a_field(cli, fit_args, tmp_path, capsys):
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [ALPACA, ALPACA | {"input": "x"}, ALPACA | {"input": "y"}, {"instruction": "a"}]
    )
    assert cli(["data", *fit_args("--data.train_path", str(bad))[1:]]) == 2
    assert f"error: {bad}:4: field 'output' is missing (fields there: instruction)" in capsys.readouterr().err


def test_pii_in_the_input_field_is_scrubbed_too(tiny_model, tmp_path):
    """The issue's record: two e-mails in instruction and output and one in input; all three go."""
    record = {
        "instruction": "Reply to jane.doe@example.org now.",
        "input": "write to jane.doe@example.org today",
        "output": "ok, mailed john@example.com",
    }
    dm = setup(tiny_model, tmp_path, [record, ALPACA], quality=QualityRules(scrub_pii=True))
    assert dm.report["train"]["quality"]["pii"] == {"EMAIL": 3}
    texts = [dm.get_tokenizer().decode(ids) for ids in dm.datasets["train"]["input_ids"]]
    assert not any("@example" in text for text in texts) and any(text.count("<EMAIL>") == 3 for text in texts)


def test_pii_is_counted_and_warned_about_when_scrubbing_is_off(tiny_model, tmp_path):
    record = {"instruction": "Reply.", "input": "write to jane.doe@example.org", "output": "call +1 415 555 0100"}
    with pytest.warns(UserWarning, match=r"train\.jsonl: PII found and kept in the text \(1 EMAIL, 1 PHONE\)"):
        dm = setup(tiny_model, tmp_path, [record, ALPACA])
    quality = dm.report["train"]["quality"]
    assert quality["pii"] == {"EMAIL": 1, "PHONE": 1} and quality["pii_kept"]
    assert any("jane.doe@example.org" in dm.get_tokenizer().decode(ids) for ids in dm.datasets["train"]["input_ids"])


def test_a_cache_hit_warns_again_naming_this_runs_file(tiny_model, tmp_path):
    record = {"instruction": "Reply.", "input": "write to jane.doe@example.org", "output": "ok"}
    first = setup(tiny_model, tmp_path / "a", [record, ALPACA], cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match=r"b/train\.jsonl: PII found and kept in the text \(1 EMAIL\)"):
        hit = setup(tiny_model, tmp_path / "b", [record, ALPACA], cache_dir=str(tmp_path / "cache"))
    assert hit.cache.path == first.cache.path


def test_chat_system_prompts_and_tool_calls_are_scrubbed(tiny_model, tmp_path):
    turns = [
        {"role": "system", "content": "Escalate to ops@example.net."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": '{"name": "mail", "arguments": {"to": "bob@example.com"}}'},
    ]
    dm = setup(tiny_model, tmp_path, [{"messages": turns}], "chat", quality=QualityRules(scrub_pii=True))
    assert dm.report["train"]["quality"]["pii"] == {"EMAIL": 2}


def test_rows_that_differ_only_in_input_are_not_duplicates_nor_leaks(tiny_model, tmp_path):
    rows = [{**ALPACA, "input": f"input number {i}"} for i in range(6)]
    val = write_jsonl(tmp_path / "val.jsonl", [{**ALPACA, "input": "another input entirely"}])
    dm = setup(tiny_model, tmp_path, rows, val_path=str(val))
    dropped = dm.report["train"]["quality"]["dropped"]
    assert dm.report["train"]["examples"] == 6 and dropped.get("exact_dedup", 0) == dropped.get("leakage", 0) == 0


def test_a_template_placeholder_typo_is_one_line():
    with pytest.raises(UserError, match=r"--data.format.template: unknown placeholder \{inptu\} \(known: "):
        Instruction(template="{instruction}\n{inptu}\n")


def test_the_instruction_field_is_required_only_when_a_template_uses_it(tiny_model, tmp_path):
    fmt = Instruction(template="Q: {input}\nA: ", template_no_input="A: ")
    dm = setup(tiny_model, tmp_path, [{"input": "2+2", "output": "4"}, {"input": "3+3", "output": "6"}], fmt)
    assert dm.report["train"]["examples"] == 2


@pytest.mark.parametrize(
    ("turn", "message"),
    [
        ("hello", r"field 'messages' turn 1: expected an object with role and content, got str \"hello\""),
        ({"role": "bot", "content": "hi"}, r"field 'messages' turn 1: unknown role 'bot' \(known: system, user"),
    ],
    ids=["string-turn", "unknown-role"],
)
def test_a_bad_chat_turn_names_the_line_and_the_turn(tiny_model, tmp_path, turn, message):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    with pytest.raises(UserError, match=rf"train\.jsonl:2: {message}"):
        setup(tiny_model, tmp_path, [good, {"messages": [turn]}], "chat")


def test_an_eval_label_training_never_shows_is_warned_about(tiny_model, tmp_path):
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "c", "label": "neutral"}, {"text": "d", "label": "pos"}])
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    labels = ["pos", "neg", "neutral"]
    with pytest.warns(UserWarning, match="label 'neutral' never occurs in the training data") as caught:
        setup(tiny_model, tmp_path, rows, Classification(), val_path=str(val), labels=labels)
    (warning,) = [w for w in caught if "never occurs" in str(w.message)]
    assert str(warning.message).startswith(f"{val}: label 'neutral' never occurs in the training data (the model")


@pytest.mark.parametrize("flag", ["batch_size", "eval_batch_size", "max_length"])
def test_a_batch_size_of_zero_is_one_line(flag):
    with pytest.raises(UserError, match=rf"^--data\.{flag} must be at least 1, got 0$"):
        FineTuneDataModule("instruction", **{flag: 0})


def test_a_zero_batch_size_on_the_command_line(cli, fit_args, capsys):
    assert cli(fit_args("--data.batch_size", "0")) == 2
    assert "error: --data.batch_size must be at least 1, got 0" in capsys.readouterr().err
