"""The data-quality rules: normalisation, empties, PII, exact/near duplicates, leakage, label balance, the report."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lightning_ft.data.quality import (
    QualityReport,
    QualityRules,
    clean,
    label_distribution,
    luhn_valid,
    rebalance,
    remove_leaks,
    scrub_pii,
)
from lightning_ft.errors import UserError

SENTENCE = "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch at dawn"
OTHER = "A completely different sentence about training language models on clean and well deduplicated data every day"
OFF = QualityRules(
    normalize_unicode=False,
    normalize_whitespace=False,
    drop_empty=False,
    exact_dedup=False,
    near_dedup=False,
    scrub_pii=False,
    leakage_check=False,
)


def records_of(texts: list, name: str = "text") -> list[tuple[int, dict]]:
    return [(i + 1, {name: text}) for i, text in enumerate(texts)]


def texts(records: list[tuple[int, dict]], name: str = "text") -> list:
    return [record[name] for _, record in records]


def test_unicode_is_nfc_normalised_and_zero_width_characters_removed():
    report = QualityReport()
    rules = QualityRules(normalize_whitespace=False)
    out = clean(records_of(["cafe\u0301", "zero\u200bwidth\ufeff", "plain"]), ["text"], rules, report, source="t")
    assert texts(out) == ["café", "zerowidth", "plain"]
    assert report.modified["normalize_unicode"] == 2
    assert report.examples["normalize_unicode"] == [1, 2]


def test_whitespace_normalised_but_code_indentation_kept():
    code = "\r\n\r\ndef f(x):\r\n    if x:\r\n\treturn 1\r\n    return 0   \n\n"
    records = records_of(["  hello\u00a0world \t", code, "a\rb", "fine"])
    report = QualityReport()
    out = clean(records, ["text"], QualityRules(), report, source="t")
    assert texts(out) == ["hello world", "def f(x):\n    if x:\n\treturn 1\n    return 0", "a\nb", "fine"]
    assert report.modified["normalize_whitespace"] == 3
    indented = clean(records_of(["\n    return x\n    # done\n"]), ["text"], QualityRules(), report, source="t")
    assert texts(indented) == ["    return x\n    # done"]


def test_records_are_not_mutated_in_place():
    record = {"text": "  spaced  ", "id": 7}
    out = clean([(1, record)], ["text"], QualityRules(), QualityReport(), source="t")
    assert record == {"text": "  spaced  ", "id": 7}
    assert out == [(1, {"text": "spaced", "id": 7})]


def test_drop_empty_counts_blank_fields():
    rows = [{"q": "a", "a": "b"}, {"q": "", "a": "b"}, {"q": " \n\t", "a": "b"}, {"q": "c", "a": "d"}]
    records = [(i + 1, row) for i, row in enumerate(rows)]
    report = QualityReport()
    out = clean(records, ["q", "a"], QualityRules(), report, source="t")
    assert [number for number, _ in out] == [1, 4]
    assert report.dropped["drop_empty"] == 2 and report.examples["drop_empty"] == [2, 3]


@pytest.mark.parametrize("drop_empty", [True, False])
@pytest.mark.parametrize(("row", "state"), [({"a": "x"}, "missing"), ({"q": None, "a": "b"}, "null")])
def test_a_missing_or_null_required_field_is_an_error_not_a_drop(row, state, drop_empty):
    records = [(1, {"q": "a", "a": "b"}), (2, row)]
    with pytest.raises(UserError, match=rf"^train.jsonl:2: field 'q' is {state} \(fields there: "):
        clean(records, ["q", "a"], QualityRules(drop_empty=drop_empty), QualityReport(), source="train.jsonl")


def test_an_optional_text_field_may_be_missing_or_empty():
    records = [(1, {"q": "a", "a": "b"}), (2, {"a": "x"}), (3, {"q": "", "a": "y"})]
    out = clean(records, ["q", "a"], QualityRules(), QualityReport(), source="t", required=["a"])
    assert [number for number, _ in out] == [1, 2, 3]


def test_a_field_in_no_record_is_a_user_error():
    records = [(1, {"prompt": "a", "completion": "b"}), (2, {"prompt": "c", "completion": "d"})]
    with pytest.raises(UserError) as err:
        clean(records, ["prompt", "response"], QualityRules(), QualityReport(), source="train.jsonl")
    assert str(err.value) == "train.jsonl: field 'response' is in no record; fields there: ['completion', 'prompt']"


def test_no_records_left_names_what_the_rules_removed():
    records = records_of(["", "  ", "same", "same", "same"])
    rules = QualityRules(exact_dedup=True)
    report = QualityReport()
    out = clean(records, ["text"], rules, report, source="d.jsonl")
    assert texts(out) == ["same"]
    assert report.dropped == {"drop_empty": 2, "exact_dedup": 2}
    with pytest.raises(UserError) as err:
        clean(records_of(["", "  ", "\t"]), ["text"], rules, QualityReport(), source="d.jsonl")
    assert str(err.value) == "d.jsonl: no records left after the quality rules (drop_empty removed 3)"


def test_exact_duplicates_after_normalisation_are_dropped_and_labels_take_part_in_the_key():
    rows = [
        ("good film", "pos"),
        (" good film\n", "pos"),
        ("bad film", "neg"),
        ("good film", "neg"),
        ("good\u00a0film", "pos"),
    ]
    records = [(i + 1, {"text": text, "label": label}) for i, (text, label) in enumerate(rows)]
    report = QualityReport()
    out = clean(records, ["text"], QualityRules(), report, source="t", key_fields=["label"])
    assert [(number, record["label"]) for number, record in out] == [(1, "pos"), (3, "neg"), (4, "neg")]
    assert report.dropped["exact_dedup"] == 2
    assert report.examples["exact_dedup"] == [2, 5]


def test_near_duplicates_dropped_and_different_sentences_kept():
    # 20 words, the last one changed: 17 of 19 word 3-grams shared (Jaccard 0.89); a middle word would break 3 of them
    one_word_changed = SENTENCE.replace("dawn", "dusk")
    records = records_of([SENTENCE, OTHER, one_word_changed, "short text", "short texts"])
    report = QualityReport()
    out = clean(records, ["text"], QualityRules(near_dedup=True), report, source="t")
    assert [number for number, _ in out] == [1, 2, 4, 5]
    assert report.dropped["near_dedup"] == 1
    assert report.examples["near_dedup"] == [3]
    strict = clean(
        records, ["text"], QualityRules(near_dedup=True, near_dedup_threshold=1.0), QualityReport(), source="t"
    )
    assert len(strict) == 5


def test_near_dedup_is_off_by_default():
    records = records_of([SENTENCE, SENTENCE.replace("dawn", "dusk")])
    report = QualityReport()
    assert len(clean(records, ["text"], QualityRules(), report, source="t")) == 2
    assert "near_dedup" not in report.dropped


def test_pii_each_type_replaced_and_counted():
    text = (
        "Mail jane.doe@example.com or bob@mail.co.uk, call +49 30 1234567, (555) 123-4567, 555-123-4567 or "
        "555.123.4567; card 4111 1111 1111 1111 or 5500-0000-0000-0004; hosts 192.168.1.20 and 2001:db8::8a2e:370:7334."
    )
    scrubbed, counts = scrub_pii(text)
    assert scrubbed == (
        "Mail <EMAIL> or <EMAIL>, call <PHONE>, <PHONE>, <PHONE> or "
        "<PHONE>; card <CREDIT_CARD> or <CREDIT_CARD>; hosts <IP_ADDRESS> and <IP_ADDRESS>."
    )
    assert counts == Counter({"EMAIL": 2, "PHONE": 4, "CREDIT_CARD": 2, "IP_ADDRESS": 2})


def test_pii_lookalikes_are_left_alone():
    text = (
        "Order 1234 5678 9012 3456 on 2023-01-05 (12.05.2023) at 10:30:15 in 2023, 42 items, id 12345, "
        "host 999.1.1.1, version 1.2.3, slice a[1::2], std::vector, x :: Int, from 100-2000, 4111111111111112"
    )
    assert scrub_pii(text) == (text, Counter())


def test_luhn():
    assert luhn_valid("4111111111111111")
    assert luhn_valid("4111 1111 1111 1111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("1234567890123456")
    assert not luhn_valid("abc")


def test_scrub_pii_in_clean_reports_records_and_counts():
    records = records_of(["write to a@b.io", "no pii here", "ip 10.0.0.1 and card 4111-1111-1111-1111"])
    report = QualityReport()
    out = clean(records, ["text"], QualityRules(scrub_pii=True), report, source="t")
    assert texts(out) == ["write to <EMAIL>", "no pii here", "ip <IP_ADDRESS> and card <CREDIT_CARD>"]
    assert report.pii == {"CREDIT_CARD": 1, "EMAIL": 1, "IP_ADDRESS": 1}
    assert report.modified["scrub_pii"] == 2
    assert report.examples["scrub_pii"] == [1, 3]


def test_chat_fields_are_normalised_and_scrubbed_inside():
    openai = [
        {"role": "user", "content": "  mail me: x@y.com\u200b "},
        {"role": "assistant", "content": "ok\r\n", "n": 3},
    ]
    sharegpt = [
        {"from": "human", "value": "cafe\u0301 call 555-123-4567"},
        {"from": "gpt", "value": [{"text": " hi "}]},
    ]
    records = [(1, {"messages": openai}), (2, {"messages": sharegpt})]
    report = QualityReport()
    out = clean(records, ["messages"], QualityRules(scrub_pii=True), report, source="t")
    assert out[0][1]["messages"] == [
        {"role": "user", "content": "mail me: <EMAIL>"},
        {"role": "assistant", "content": "ok", "n": 3},
    ]
    assert out[1][1]["messages"] == [
        {"from": "human", "value": "café call <PHONE>"},
        {"from": "gpt", "value": [{"text": "hi"}]},
    ]
    assert report.pii == {"EMAIL": 1, "PHONE": 1}
    assert records[0][1]["messages"][0]["content"] == "  mail me: x@y.com\u200b "


def test_empty_chat_list_is_dropped():
    records = [(1, {"messages": []}), (2, {"messages": [{"role": "user", "content": "hi"}]})]
    report = QualityReport()
    assert [n for n, _ in clean(records, ["messages"], QualityRules(), report, source="t")] == [2]
    assert report.dropped["drop_empty"] == 1


def test_rules_switched_off_do_nothing():
    rows = [
        "  cafe\u0301\u200b  ",
        "  cafe\u0301\u200b  ",
        "",
        "mail a@b.io",
        SENTENCE,
        SENTENCE.replace("dawn", "dusk"),
    ]
    records = records_of(rows)
    report = QualityReport()
    out = clean(records, ["text"], OFF, report, source="t")
    assert out == records
    assert all(a[1] is b[1] for a, b in zip(out, records))
    assert remove_leaks(records, [records], ["text"], OFF, report) == records
    assert rebalance(records, "text", "none", 0, report) is records
    # PII is detected and counted even with scrub_pii off, and said to be kept; nothing is rewritten
    assert report.to_dict() == {"dropped": {}, "pii": {"EMAIL": 1}, "pii_kept": True, "modified": {}, "examples": {}}


def test_leakage_exact_and_near_removed_from_train_only():
    train = records_of([SENTENCE.replace("dawn", "dusk"), "  held out exactly ", OTHER, "unique train text"])
    val = records_of(["held out exactly", "val only text here"])
    test = records_of([SENTENCE])
    report = QualityReport()
    kept = remove_leaks(train, [val, test], ["text"], QualityRules(), report)
    assert [number for number, _ in kept] == [3, 4]
    assert kept[0] is train[2]
    assert report.dropped == {"leakage": 2}
    assert report.examples["leakage"] == [1, 2]
    assert len(val) == 2 and len(test) == 1


def test_leakage_key_includes_key_fields_and_threshold_is_respected():
    train = [
        (1, {"text": "great fun", "label": "pos"}),
        (2, {"text": SENTENCE.replace("dawn", "dusk"), "label": "pos"}),
    ]
    val = [(1, {"text": "great fun", "label": "neg"}), (2, {"text": SENTENCE, "label": "pos"})]
    rules = QualityRules(leakage_threshold=1.0)
    report = QualityReport()
    kept = remove_leaks(train, [val], ["text"], rules, report, key_fields=["label"])
    # "great fun" has another label, but its text is the same, so the near check (similarity 1.0) still finds it
    assert [number for number, _ in kept] == [2]
    assert report.dropped["leakage"] == 1


def test_leakage_check_off_keeps_everything():
    train = records_of(["same", "other"])
    report = QualityReport()
    assert remove_leaks(train, [records_of(["same"])], ["text"], QualityRules(leakage_check=False), report) is train
    assert report.dropped == {}


def test_label_distribution_sorted_and_stringified():
    records = [(i + 1, {"label": label}) for i, label in enumerate(["pos", "neg", "pos", 1, "pos", 0])]
    assert label_distribution(records, "label") == {"0": 1, "1": 1, "neg": 1, "pos": 3}


def skewed() -> list[tuple[int, dict]]:
    labels = ["a"] * 6 + ["b"] * 3 + ["c"] * 2
    return [(i + 1, {"text": f"t{i}", "label": label}) for i, label in enumerate(labels)]


def test_downsample_to_rarest_label_deterministically_and_in_order():
    report = QualityReport()
    out = rebalance(skewed(), "label", "downsample", seed=3, report=report)
    assert label_distribution(out, "label") == {"a": 2, "b": 2, "c": 2}
    numbers = [number for number, _ in out]
    assert numbers == sorted(numbers)
    assert report.dropped["rebalance"] == 5
    assert [n for n, _ in rebalance(skewed(), "label", "downsample", 3, QualityReport())] == numbers
    other_seeds = {
        tuple(n for n, _ in rebalance(skewed(), "label", "downsample", s, QualityReport())) for s in range(8)
    }
    assert len(other_seeds) > 1


def test_upsample_to_commonest_label_deterministically():
    report = QualityReport()
    out = rebalance(skewed(), "label", "upsample", seed=5, report=report)
    assert label_distribution(out, "label") == {"a": 6, "b": 6, "c": 6}
    assert out[:6] == skewed()[:6]
    numbers = [number for number, _ in out]
    assert numbers == sorted(numbers)
    assert set(numbers) == set(range(1, 12))
    assert report.modified["rebalance"] == 7
    assert report.dropped["rebalance"] == 0
    assert rebalance(skewed(), "label", "upsample", 5, QualityReport()) == out


def test_rebalance_errors():
    with pytest.raises(UserError, match="record 2: no 'label' field"):
        rebalance([(1, {"label": "a"}), (2, {"text": "x"})], "label", "downsample", 0, QualityReport())
    with pytest.raises(UserError, match="rebalance must be none, downsample or upsample"):
        rebalance(skewed(), "label", "sideways", 0, QualityReport())
    with pytest.raises(UserError, match="near_dedup_threshold must be in"):
        QualityRules(near_dedup_threshold=0.0)


def test_report_is_json_serialisable_and_accumulates():
    report = QualityReport()
    records = records_of(["  a@b.io ", "  a@b.io ", "", SENTENCE, SENTENCE.replace("dawn", "dusk")])
    kept = clean(records, ["text"], QualityRules(near_dedup=True, scrub_pii=True), report, source="t")
    remove_leaks(kept, [records_of(["<EMAIL>"])], ["text"], QualityRules(), report)
    rebalance(kept, "text", "downsample", 0, report)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["dropped"] == {"drop_empty": 1, "exact_dedup": 1, "near_dedup": 1, "leakage": 1, "rebalance": 0}
    assert data["pii"] == {"EMAIL": 2}
    assert data["modified"] == {"normalize_unicode": 0, "normalize_whitespace": 2, "scrub_pii": 2}
    assert data["examples"]["exact_dedup"] == [2]
