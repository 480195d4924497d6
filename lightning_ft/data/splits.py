"""Carving train / val / test (or k-fold) splits out of one list of records, reproducibly for a seed."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime

from lightning_ft.data.sources import NumberedRecord
from lightning_ft.errors import UserError

FLAG = "--data.split"


@dataclass(frozen=True)
class SplitSpec:
    """How to carve splits from the training file when no separate val/test files are given.

    Set with the `--data.split.<name>` flags.

    Args:
        val_fraction / test_fraction: shares of records, in [0, 1) and summing to < 1. A size is n * fraction rounded
            half up, at least 1 if the fraction is > 0 (never silently empty); train must keep at least one record.
        stratify_by: a field (e.g. "label"): each value keeps its share of test to within one record, and of val
            and train to within two; the split sizes are the same as without it.
        num_folds / fold: k-fold: after the test split, the rest is dealt round-robin (per stratify_by value) into
            num_folds folds; fold `fold` (0-based) is val, the others train; val_fraction must be 0.
        time_field: sort by this field (ISO-8601 dates/datetimes, a trailing 'Z' allowed, or numbers): oldest ->
            train, then val, newest -> test; ties keep file order; no shuffling.
    """

    val_fraction: float = 0.0
    test_fraction: float = 0.0
    stratify_by: str | None = None
    num_folds: int | None = None
    fold: int = 0
    time_field: str | None = None

    @property
    def carves_val(self) -> bool:
        """Whether a validation split is taken from the training file (a share, or a k-fold fold)."""
        return self.val_fraction > 0 or self.num_folds is not None

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{FLAG}.{name} {getattr(self, name)} must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError(
                f"{FLAG}.val_fraction {self.val_fraction} + {FLAG}.test_fraction {self.test_fraction} must be < 1"
            )
        if self.num_folds is None:
            if self.fold != 0:
                raise UserError(f"{FLAG}.fold {self.fold} needs {FLAG}.num_folds")
        else:
            if self.num_folds < 2:
                raise UserError(f"{FLAG}.num_folds {self.num_folds} must be >= 2")
            if self.fold < 0:
                raise UserError(f"{FLAG}.fold {self.fold} must be >= 0")
            if self.fold >= self.num_folds:
                raise UserError(f"{FLAG}.fold {self.fold} must be < {FLAG}.num_folds {self.num_folds}")
            if self.val_fraction:
                raise UserError(
                    f"{FLAG}.val_fraction {self.val_fraction} must be 0 with {FLAG}.num_folds "
                    f"(fold {self.fold} is the validation set)"
                )
        for other in ("num_folds", "stratify_by"):
            if self.time_field is not None and getattr(self, other) is not None:
                raise UserError(f"{FLAG}.time_field cannot be combined with {FLAG}.{other}")
        for name in ("stratify_by", "time_field"):
            if getattr(self, name) is not None and not self.active():
                raise UserError(f"{FLAG}.{name} needs {FLAG}.val_fraction, {FLAG}.test_fraction or {FLAG}.num_folds")

    def active(self) -> bool:
        """True if any carving is asked for; otherwise the whole file is the training set."""
        return self.val_fraction > 0 or self.test_fraction > 0 or self.num_folds is not None


def carve(records: list[NumberedRecord], spec: SplitSpec, seed: int) -> dict[str, list[NumberedRecord]]:
    """{"train": [...], "val": [...], "test": [...]} (val/test keys present only when non-empty).

    Every record lands in exactly one split. Within each split, records keep their original file order (so line
    numbers read naturally). Same records, spec and seed give the same splits."""
    if not spec.active():
        return {"train": list(records)}
    if spec.time_field is not None:
        order = _time_order(records, spec.time_field)
        n_test, n_val = _sizes(len(order), spec)
        cut = len(order) - n_test - n_val
        parts = {"train": order[:cut], "val": order[cut : cut + n_val], "test": order[cut + n_val :]}
    else:
        order = _shuffled_order(records, spec.stratify_by, random.Random(seed))
        n_test, n_val = _sizes(len(order), spec)
        test, rest = _spread(order, n_test)
        val, train = _spread(rest, n_val) if spec.num_folds is None else _folds(rest, spec)
        parts = {"train": train, "val": val, "test": test}
    return {
        name: [records[i] for i in sorted(parts[name])]
        for name in ("train", "val", "test")
        if parts[name] or name == "train"
    }


def _size(n: int, fraction: float) -> int:
    """n * fraction rounded half up (Python's round() sends 2.5 to 2), and at least 1 when a split is asked for.

    Rounding to 9 places first keeps float noise (45 * 0.7 = 31.499999999999996) from deciding a half."""
    return max(1, math.floor(round(n * fraction, 9) + 0.5)) if fraction > 0 else 0


def _sizes(n: int, spec: SplitSpec) -> tuple[int, int]:
    """(test size, val size) for n records; training must keep at least one record."""
    n_test, n_val = _size(n, spec.test_fraction), _size(n, spec.val_fraction)
    if n - n_test - n_val < 1:
        raise UserError(
            f"{FLAG}.val_fraction {spec.val_fraction} and {FLAG}.test_fraction {spec.test_fraction} "
            f"leave no training records out of {n}"
        )
    return n_test, n_val


def _shuffled_order(records: list[NumberedRecord], stratify_by: str | None, rng: random.Random) -> list[int]:
    """Record indices shuffled; with stratify_by, shuffled within each value and grouped by value (first seen first).

    Strata are then contiguous runs, so evenly spaced picks (_spread) and round-robin folds give each its share."""
    if stratify_by is None:
        order = list(range(len(records)))
        rng.shuffle(order)
        return order
    groups: dict[str, list[int]] = {}
    for index, (line, record) in enumerate(records):
        if stratify_by not in record:
            raise UserError(f"record at line {line}: field '{stratify_by}' ({FLAG}.stratify_by) is missing")
        groups.setdefault(json.dumps(record[stratify_by], sort_keys=True, default=str), []).append(index)
    for group in groups.values():
        rng.shuffle(group)
    return [index for group in groups.values() for index in group]


def _spread(order: list[int], count: int) -> tuple[list[int], list[int]]:
    """(picked, rest): `count` indices at evenly spaced positions of `order` (Bresenham), both in `order`'s order.

    Any run of consecutive positions (one stratum) gets the floor or the ceiling of its exact share of `count`."""
    hits = [(p + 1) * count // len(order) > p * count // len(order) for p in range(len(order))]
    return [i for i, hit in zip(order, hits) if hit], [i for i, hit in zip(order, hits) if not hit]


def _folds(rest: list[int], spec: SplitSpec) -> tuple[list[int], list[int]]:
    """(val, train): `rest` dealt round-robin into num_folds folds; fold `fold` is val, the others are train.

    Over stratum-grouped `rest`, folds differ by at most one record, overall and per stratum."""
    k = spec.num_folds
    if len(rest) < k:
        raise UserError(f"{FLAG}.num_folds {k} needs at least {k} records outside the test split, got {len(rest)}")
    return rest[spec.fold :: k], [i for p, i in enumerate(rest) if p % k != spec.fold]


def _time_order(records: list[NumberedRecord], field: str) -> list[int]:
    """Record indices oldest first; sorted() is stable, so ties keep file order.

    All times must be of one kind: numbers, or dates all with or all without a timezone (else they don't compare)."""
    times = [_parse_time(line, record, field) for line, record in records]
    for (line, record), (kind, _) in zip(records, times):
        if kind != times[0][0]:
            raise UserError(
                f"record at line {line}: field '{field}' ({FLAG}.time_field) is {kind}, "
                f"{record[field]!r}, but line {records[0][0]} has {times[0][0]}"
            )
    return sorted(range(len(records)), key=lambda i: times[i][1])


def _parse_time(line: int, record: dict, field: str) -> tuple[str, float | datetime]:
    """(kind, comparable time) of one record's time field; the kind says what it may be compared with.

    Python 3.11's fromisoformat reads a trailing 'Z'; it is replaced anyway to also accept a lower-case 'z'."""
    if field not in record:
        raise UserError(f"record at line {line}: field '{field}' ({FLAG}.time_field) is missing")
    value = record[field]
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return "a number", value
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
        except ValueError:
            pass
        else:
            return ("a date with a timezone" if parsed.tzinfo else "a date without a timezone"), parsed
    raise UserError(
        f"record at line {line}: field '{field}' ({FLAG}.time_field) is {value!r}, "
        "not a number or an ISO-8601 date/time"
    )
