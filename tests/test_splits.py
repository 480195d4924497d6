"""Carving splits from one file: sizes, coverage, determinism, stratification, k-fold, time order, flag errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lightning_ft.data.splits import SplitSpec, carve
from lightning_ft.errors import UserError


def numbered(n: int, **fields) -> list[tuple[int, dict]]:
    """n records numbered 1..n; each field value is a function of the 0-based index."""
    return [(i + 1, {"id": i, **{name: make(i) for name, make in fields.items()}}) for i in range(n)]


def lines(split) -> list[int]:
    return [line for line, _ in split]


def planted_80_20(n: int = 100) -> list[tuple[int, dict]]:
    """Every fifth record is "neg": 80% pos, 20% neg, interleaved through the file."""
    return numbered(n, label=lambda i: "neg" if i % 5 == 0 else "pos")


def check_partition(splits: dict, n: int) -> None:
    """Every record in exactly one split, each split in file order, no empty split keys."""
    every = [line for split in splits.values() for line in lines(split)]
    assert sorted(every) == list(range(1, n + 1))
    assert all(lines(split) == sorted(lines(split)) and split for split in splits.values())


def test_inactive_spec_keeps_everything_for_training():
    records = numbered(5)
    assert not SplitSpec().active()
    assert carve(records, SplitSpec(), seed=0) == {"train": records}
    assert SplitSpec(val_fraction=0.1).active() and SplitSpec(test_fraction=0.1).active()
    assert SplitSpec(num_folds=3).active()


def test_holdout_sizes_cover_every_record_once_in_file_order():
    splits = carve(numbered(100), SplitSpec(val_fraction=0.1, test_fraction=0.2), seed=0)
    assert {name: len(split) for name, split in splits.items()} == {"train": 70, "val": 10, "test": 20}
    check_partition(splits, 100)
    assert all(record["id"] == line - 1 for split in splits.values() for line, record in split)


def test_only_requested_splits_are_returned():
    assert set(carve(numbered(10), SplitSpec(val_fraction=0.3), seed=0)) == {"train", "val"}
    assert set(carve(numbered(10), SplitSpec(test_fraction=0.3), seed=0)) == {"train", "test"}


def test_same_seed_same_split_other_seed_other_split():
    records, spec = numbered(50), SplitSpec(val_fraction=0.2, test_fraction=0.2)
    assert carve(records, spec, seed=7) == carve(list(records), spec, seed=7)
    assert lines(carve(records, spec, seed=7)["test"]) != lines(carve(records, spec, seed=8)["test"])
    assert lines(carve(records, spec, seed=7)["val"]) != lines(carve(records, spec, seed=8)["val"])


def test_the_split_is_random_not_a_slice_of_the_file():
    test = lines(carve(numbered(100), SplitSpec(test_fraction=0.2), seed=0)["test"])
    assert test != list(range(81, 101)) and test != list(range(1, 21))
    assert min(test) <= 40 and max(test) > 60


def test_sizes_round_half_up():
    assert len(carve(numbered(25), SplitSpec(val_fraction=0.1), seed=0)["val"]) == 3  # round() would give 2
    assert len(carve(numbered(45), SplitSpec(test_fraction=0.7), seed=0)["test"]) == 32  # 45 * 0.7 = 31.4999...
    assert len(carve(numbered(24), SplitSpec(val_fraction=0.1), seed=0)["val"]) == 2


@pytest.mark.parametrize("n", [3, 10, 49])
def test_a_tiny_fraction_still_yields_one_record(n):
    splits = carve(numbered(n), SplitSpec(val_fraction=0.001, test_fraction=0.001), seed=3)
    assert len(splits["val"]) == len(splits["test"]) == 1 and len(splits["train"]) == n - 2
    assert {k: len(v) for k, v in carve(numbered(2), SplitSpec(val_fraction=0.001), seed=3).items()} == {
        "train": 1,
        "val": 1,
    }


@pytest.mark.parametrize(
    "n, spec",
    [
        (0, SplitSpec(val_fraction=0.1)),
        (1, SplitSpec(val_fraction=0.1)),
        (2, SplitSpec(val_fraction=0.001, test_fraction=0.001)),
        (3, SplitSpec(val_fraction=0.45, test_fraction=0.5)),
    ],
)
def test_training_must_keep_a_record(n, spec):
    with pytest.raises(UserError) as err:
        carve(numbered(n), spec, seed=0)
    assert str(err.value) == (
        f"--data.split.val_fraction {spec.val_fraction} and --data.split.test_fraction "
        f"{spec.test_fraction} leave no training records out of {n}"
    )


def test_stratified_holdout_keeps_an_80_20_label_mix_exactly():
    records = planted_80_20()
    for seed in range(5):
        splits = carve(records, SplitSpec(val_fraction=0.1, test_fraction=0.2, stratify_by="label"), seed=seed)
        counts = {name: Counter(r["label"] for _, r in split) for name, split in splits.items()}
        assert counts == {"train": {"pos": 56, "neg": 14}, "val": {"pos": 8, "neg": 2}, "test": {"pos": 16, "neg": 4}}
        check_partition(splits, 100)
    only_val = carve(records, SplitSpec(val_fraction=0.1, stratify_by="label"), seed=0)["val"]
    assert Counter(r["label"] for _, r in only_val) == {"pos": 8, "neg": 2}


def test_stratified_split_sizes_match_unstratified_and_each_value_gets_its_share():
    rng = random.Random(0)
    for trial in range(30):
        records = numbered(rng.randint(20, 60), label=lambda i: rng.choice("aaaabbc"))
        spec = SplitSpec(val_fraction=0.15, test_fraction=0.2, stratify_by="label")
        splits, plain = carve(records, spec, seed=trial), carve(records, SplitSpec(0.15, 0.2), seed=trial)
        assert {k: len(v) for k, v in splits.items()} == {k: len(v) for k, v in plain.items()}
        check_partition(splits, len(records))
        totals = Counter(r["label"] for _, r in records)
        for value, total in totals.items():
            for name, slack in (("test", 1), ("val", 2), ("train", 2)):
                share = total * len(splits[name]) / len(records)
                assert share - slack < sum(r["label"] == value for _, r in splits[name]) < share + slack


def test_stratified_values_are_compared_by_value_not_by_text():
    records = numbered(20, label=lambda i: 1 if i < 10 else "1")  # int 1 and string "1" are two classes
    splits = carve(records, SplitSpec(val_fraction=0.2, stratify_by="label"), seed=0)
    assert Counter(type(r["label"]).__name__ for _, r in splits["val"]) == {"int": 2, "str": 2}


def test_stratify_field_missing_names_the_line():
    records = planted_80_20(10)
    del records[2][1]["label"]
    with pytest.raises(UserError) as err:
        carve(records, SplitSpec(val_fraction=0.2, stratify_by="label"), seed=0)
    assert str(err.value) == "record at line 3: field 'label' (--data.split.stratify_by) is missing"


def test_k_fold_covers_every_non_test_record_once_with_test_carved_first():
    records, folds = numbered(23), []
    for fold in range(4):
        splits = carve(records, SplitSpec(test_fraction=0.2, num_folds=4, fold=fold), seed=5)
        check_partition(splits, 23)
        folds.append(splits)
    test = lines(folds[0]["test"])
    assert len(test) == 5 and all(lines(f["test"]) == test for f in folds)
    vals = [set(lines(f["val"])) for f in folds]
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5]
    assert set().union(*vals) == set(range(1, 24)) - set(test) and sum(map(len, vals)) == 18
    assert all(vals[a].isdisjoint(vals[b]) for a in range(4) for b in range(a + 1, 4))
    assert all(set(lines(f["train"])) == set(range(1, 24)) - set(test) - v for f, v in zip(folds, vals))


def test_k_fold_without_test_and_seed_sensitivity():
    records = numbered(10)
    splits = carve(records, SplitSpec(num_folds=3, fold=1), seed=0)
    assert set(splits) == {"train", "val"} and len(splits["val"]) in (3, 4)
    assert carve(records, SplitSpec(num_folds=3, fold=1), seed=0) == splits
    assert lines(carve(records, SplitSpec(num_folds=3, fold=1), seed=1)["val"]) != lines(splits["val"])


def test_stratified_k_fold_keeps_the_label_mix_in_every_fold():
    records = planted_80_20()
    seen = set()
    for fold in range(5):
        val = carve(records, SplitSpec(num_folds=5, fold=fold, stratify_by="label"), seed=2)["val"]
        assert Counter(r["label"] for _, r in val) == {"pos": 16, "neg": 4}
        seen |= set(lines(val))
    assert seen == set(range(1, 101))


def test_k_fold_needs_a_record_per_fold():
    with pytest.raises(UserError) as err:
        carve(numbered(5), SplitSpec(test_fraction=0.4, num_folds=4), seed=0)
    assert str(err.value) == "--data.split.num_folds 4 needs at least 4 records outside the test split, got 3"


def test_time_split_puts_oldest_in_train_and_newest_in_test():
    days = list(range(1, 21))
    random.Random(1).shuffle(days)
    stamps = [f"2024-03-{d:02d}T08:00:00" + ("Z" if d % 2 else "+00:00") for d in days]
    records = numbered(20, t=lambda i: stamps[i])
    splits = carve(records, SplitSpec(val_fraction=0.25, test_fraction=0.25, time_field="t"), seed=0)
    day = {name: [int(r["t"][8:10]) for _, r in split] for name, split in splits.items()}
    assert sorted(day["train"]) == list(range(1, 11)) and sorted(day["val"]) == list(range(11, 16))
    assert sorted(day["test"]) == list(range(16, 21))
    check_partition(splits, 20)
    assert carve(records, SplitSpec(val_fraction=0.25, test_fraction=0.25, time_field="t"), seed=9) == splits


def test_time_split_compares_instants_across_timezones_and_numbers():
    stamps = ["2024-01-02T00:30:00Z", "2024-01-01T23:00:00-02:00", "2024-01-01T12:00:00+00:00", "2024-01-02T00:00z"]
    splits = carve(
        numbered(4, t=lambda i: stamps[i]), SplitSpec(test_fraction=0.25, val_fraction=0.25, time_field="t"), seed=0
    )
    assert lines(splits["test"]) == [2] and lines(splits["val"]) == [1] and lines(splits["train"]) == [3, 4]
    naive = ["2024-05-01", "2023-12-31T23:59:59", "2024-05-01T00:00:01"]
    assert lines(
        carve(numbered(3, t=lambda i: naive[i]), SplitSpec(test_fraction=0.3, time_field="t"), seed=0)["test"]
    ) == [3]
    numbers = [3.5, -1, 10, 2, 7]
    splits = carve(
        numbered(5, t=lambda i: numbers[i]), SplitSpec(val_fraction=0.2, test_fraction=0.2, time_field="t"), seed=0
    )
    assert lines(splits["test"]) == [3] and lines(splits["val"]) == [5] and lines(splits["train"]) == [1, 2, 4]


def test_time_ties_keep_file_order():
    times = [5, 1, 5, 5, 1, 5]
    splits = carve(numbered(6, t=lambda i: times[i]), SplitSpec(test_fraction=0.5, time_field="t"), seed=0)
    assert lines(splits["train"]) == [1, 2, 5] and lines(splits["test"]) == [3, 4, 6]


def time_error(line: int, what: str) -> str:
    return f"record at line {line}: field 't' (--data.split.time_field) is {what}"


@pytest.mark.parametrize(
    "values, message",
    [
        ([1, "2024-01-01", 3], time_error(2, "a date without a timezone, '2024-01-01', but line 1 has a number")),
        (
            ["2024-01-01T00:00Z", "2024-01-02"],
            time_error(2, "a date without a timezone, '2024-01-02', but line 1 has a date with a timezone"),
        ),
        ([1, "yesterday"], time_error(2, "'yesterday', not a number or an ISO-8601 date/time")),
        ([1, 2, True], time_error(3, "True, not a number or an ISO-8601 date/time")),
        ([float("nan"), 2], time_error(1, "nan, not a number or an ISO-8601 date/time")),
    ],
)
def test_time_values_that_cannot_be_ordered(values, message):
    with pytest.raises(UserError) as err:
        carve(numbered(len(values), t=lambda i: values[i]), SplitSpec(test_fraction=0.3, time_field="t"), seed=0)
    assert str(err.value) == message


def test_time_field_missing_names_the_line():
    records = numbered(4, t=lambda i: i)
    del records[3][1]["t"]
    with pytest.raises(UserError) as err:
        carve(records, SplitSpec(test_fraction=0.3, time_field="t"), seed=0)
    assert str(err.value) == "record at line 4: field 't' (--data.split.time_field) is missing"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 1.0}, "--data.split.val_fraction 1.0 must be in [0, 1)"),
        ({"test_fraction": -0.1}, "--data.split.test_fraction -0.1 must be in [0, 1)"),
        ({"val_fraction": float("nan")}, "--data.split.val_fraction nan must be in [0, 1)"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            "--data.split.val_fraction 0.5 + --data.split.test_fraction 0.5 must be < 1",
        ),
        ({"num_folds": 1}, "--data.split.num_folds 1 must be >= 2"),
        ({"num_folds": 5, "fold": 5}, "--data.split.fold 5 must be < --data.split.num_folds 5"),
        ({"num_folds": 5, "fold": -1}, "--data.split.fold -1 must be >= 0"),
        ({"fold": 2}, "--data.split.fold 2 needs --data.split.num_folds"),
        (
            {"num_folds": 5, "val_fraction": 0.1},
            "--data.split.val_fraction 0.1 must be 0 with --data.split.num_folds (fold 0 is the validation set)",
        ),
        ({"num_folds": 3, "time_field": "t"}, "--data.split.time_field cannot be combined with --data.split.num_folds"),
        (
            {"test_fraction": 0.1, "stratify_by": "label", "time_field": "t"},
            "--data.split.time_field cannot be combined with --data.split.stratify_by",
        ),
        (
            {"stratify_by": "label"},
            "--data.split.stratify_by needs --data.split.val_fraction, --data.split.test_fraction or --data.split.num_folds",
        ),
        (
            {"time_field": "t"},
            "--data.split.time_field needs --data.split.val_fraction, --data.split.test_fraction or --data.split.num_folds",
        ),
    ],
)
def test_bad_flags_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserError) as err:
        SplitSpec(**kwargs)
    assert str(err.value) == message and "\n" not in message
