"""Data-quality rules run on records before tokenisation: normalisation, empties, PII, duplicates, leakage, balance."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Literal

from datasketch import MinHash, MinHashLSH

from lightning_ft.data.sources import NumberedRecord
from lightning_ft.errors import UserError

NUM_PERM = 128
MINHASH_SEED = 1
MAX_EXAMPLES = 5

_ZERO_WIDTH = re.compile("[\u200b-\u200d\ufeff]")
_NEWLINES = re.compile("\r\n?|[\u2028\u2029]")
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_LEADING_BLANK_LINES = re.compile(r"\A\s*\n")
_WORD = re.compile(r"\w+")

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<!\w)(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)(?!\w)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[.-])"
    r"(?:\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}"  # international: +49 30 1234567, +1 (555) 123-4567
    r"|(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4})"  # (555) 123-4567, 555-123-4567, 555.123.4567
    r"(?!\w)(?![-.]\d)"
)


@dataclass(frozen=True)
class QualityRules:
    """Which quality rules run on the data files; each is a `--data.quality.<name>` flag.

    Args:
        normalize_unicode: NFC-normalise every string and remove zero-width characters (U+200B-U+200D, U+FEFF).
        normalize_whitespace: \\r\\n and \\r become \\n, odd spaces (no-break, em, ...) a plain space, and the ends of
            each string are stripped; inner newlines and indentation are kept (multi-line text keeps the first
            line's indentation too, as it may be code).
        drop_empty: drop records with a required text field that is empty or whitespace-only (one missing or null is
            an error naming the line).
        exact_dedup: drop records whose text fields (after normalisation) and key fields equal an earlier record's.
        near_dedup: drop records whose MinHash Jaccard similarity to an earlier kept record is >= near_dedup_threshold.
        near_dedup_threshold: similarity (0-1] above which two records count as near-duplicates.
        scrub_pii: replace e-mails, phone numbers, Luhn-valid card numbers and IP addresses by <EMAIL>, <PHONE>,
            <CREDIT_CARD> and <IP_ADDRESS>.
        leakage_check: remove train records that exactly or nearly (>= leakage_threshold) equal a val/test record.
        leakage_threshold: similarity (0-1] above which a train record counts as leaked.
        rebalance: balance the labels of the train split (classification): "none", "downsample" every label to the
            rarest one's count, or "upsample" every label to the commonest one's count (seeded).
    """

    normalize_unicode: bool = True
    normalize_whitespace: bool = True
    drop_empty: bool = True
    exact_dedup: bool = True
    near_dedup: bool = False
    near_dedup_threshold: float = 0.85
    scrub_pii: bool = False
    leakage_check: bool = True
    leakage_threshold: float = 0.85
    rebalance: Literal["none", "downsample", "upsample"] = "none"

    def __post_init__(self) -> None:
        for name in ("near_dedup_threshold", "leakage_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UserError(f"--data.quality.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.rebalance not in ("none", "downsample", "upsample"):
            raise UserError(f"--data.quality.rebalance must be none, downsample or upsample, got {self.rebalance!r}")


@dataclass
class QualityReport:
    """What the rules did, for the run summary: counts per rule and a few line numbers to look at.

    `dropped` and `modified` count records per rule ("rebalance" in `modified` counts the copies upsampling added),
    `pii` counts what was found per placeholder type (replaced only with scrub_pii; `pii_kept` says it was not),
    `examples` keeps up to 5 line numbers per rule.
    """

    dropped: dict[str, int] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)
    pii_kept: bool = False  # found, but scrub_pii is off: the text still holds it
    modified: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def note(self, counts: dict[str, int], rule: str, numbers: Sequence[int]) -> None:
        """Add `numbers` (line numbers of affected records) to `counts[rule]` and to the examples."""
        counts[rule] = counts.get(rule, 0) + len(numbers)
        if numbers:
            examples = self.examples.setdefault(rule, [])
            examples.extend(numbers[: MAX_EXAMPLES - len(examples)])


def luhn_valid(digits: str) -> bool:
    """Whether a card number (spaces and dashes allowed) passes the Luhn checksum.

    Card numbers carry this check digit, so most random 13-19 digit runs (ids, amounts) are not taken for one.
    """
    number = re.sub(r"[ -]", "", digits)
    if len(number) < 2 or not (number.isascii() and number.isdigit()):
        return False
    doubled = (int(d) * 2 - 9 if int(d) > 4 else int(d) * 2 for d in number[-2::-2])
    return (sum(int(d) for d in number[::-2]) + sum(doubled)) % 10 == 0


def _is_ip(text: str, min_groups: int = 0) -> bool:
    # IPv6 needs three groups, so that code such as a[1::2] or a C++ `::` is not taken for an address.
    try:
        return len(re.findall(r"[0-9A-Fa-f]+", text)) >= min_groups and ipaddress.ip_address(text) is not None
    except ValueError:
        return False


_PII_RULES: tuple[tuple[str, re.Pattern, Callable[[str], bool]], ...] = (
    ("EMAIL", _EMAIL, lambda text: True),
    ("CREDIT_CARD", _CARD, luhn_valid),  # before phones, so a card number is not taken for one
    ("IP_ADDRESS", _IPV6, lambda text: _is_ip(text, min_groups=3)),
    ("IP_ADDRESS", _IPV4, _is_ip),
    ("PHONE", _PHONE, lambda text: 7 <= sum(c.isdigit() for c in text) <= 15),
)


def scrub_pii(text: str) -> tuple[str, Counter]:
    """The text with e-mails, card numbers, IP addresses and phone numbers replaced, and the count per type.

    Candidates are found by pattern and then validated (Luhn, `ipaddress`, digit count), to keep false hits rare.
    """
    counts: Counter = Counter()
    for kind, pattern, valid in _PII_RULES:
        text = pattern.sub(partial(_placeholder, kind=kind, valid=valid, counts=counts), text)
    return text, counts


def _placeholder(match: re.Match, kind: str, valid: Callable[[str], bool], counts: Counter) -> str:
    if not valid(match.group()):
        return match.group()
    counts[kind] += 1
    return f"<{kind}>"


def _normalize_unicode(text: str) -> str:
    return unicodedata.normalize("NFC", _ZERO_WIDTH.sub("", text))


def _normalize_whitespace(text: str, keep_ends: bool = False) -> str:
    text = _ODD_SPACES.sub(" ", _NEWLINES.sub("\n", text))
    if keep_ends:  # a text joined to another as written (a preference prompt and its response)
        return text
    if "\n" in text.strip():  # may be code: keep the first line's indentation
        return _LEADING_BLANK_LINES.sub("", text).rstrip()
    return text.strip()


def normalize_value(value, rules: QualityRules, keep_ends: bool = False):
    """A field's value (text, or chat turns) normalised as the rules normalise the data files: what serving applies
    to requests, so that they reach the model as training text did."""
    if rules.normalize_unicode:
        value = _map_strings(value, _normalize_unicode)
    if rules.normalize_whitespace:
        value = _map_strings(value, lambda text: _normalize_whitespace(text, keep_ends=keep_ends))
    return value


def _map_strings(value, fn: Callable[[str], str]):
    """`value` with `fn` applied to every string in it (chat fields are lists of dicts); other values kept."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(item, fn) for item in value]
    if isinstance(value, dict):
        return {key: _map_strings(item, fn) for key, item in value.items()}
    return value


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [text for item in items for text in _strings(item)]


def _has_text(value) -> bool:
    if isinstance(value, (str, list, dict)):
        return any(text.strip() for text in _strings(value))
    return value is not None


def _rewrite(
    records: list[NumberedRecord],
    fields: Sequence[str],
    fn: Callable[[str, str], str],
    rule: str,
    report: QualityReport,
) -> list[NumberedRecord]:
    """The records with `fn(field, text)` applied to the strings of their text fields; changed ones are new dicts."""
    out, changed = [], []
    for number, record in records:
        new = {**record, **{name: _map_strings(record[name], partial(fn, name)) for name in fields if name in record}}
        if new != record:
            changed.append(number)
        out.append((number, new if new != record else record))
    report.note(report.modified, rule, changed)
    return out


def _filter(
    records: list[NumberedRecord], keep: list[bool], rule: str, report: QualityReport, removed: dict[str, int]
) -> list[NumberedRecord]:
    report.note(report.dropped, rule, [number for (number, _), kept in zip(records, keep) if not kept])
    removed[rule] = keep.count(False)
    return [record for record, kept in zip(records, keep) if kept]


def _key(record: dict, fields: Sequence[str], key_fields: Sequence[str]) -> str:
    return json.dumps({name: record.get(name) for name in (*fields, *key_fields)}, sort_keys=True, default=str)


def _minhashes(records: list[NumberedRecord], fields: Sequence[str]) -> list[MinHash]:
    """One MinHash per record, over word 3-grams of its lower-cased text (single words/characters if shorter)."""
    shingle_sets = []
    for _, record in records:
        text = "\n".join(text for name in fields for text in _strings(record.get(name))).lower()
        words = _WORD.findall(text)
        grams = {" ".join(words[i : i + 3]) for i in range(len(words) - 2)} or set(words) or set(text.strip())
        shingle_sets.append([gram.encode("utf-8") for gram in grams])
    return MinHash.bulk(shingle_sets, num_perm=NUM_PERM, seed=MINHASH_SEED)


def _lsh(threshold: float) -> MinHashLSH:
    # LSH only proposes candidates (checked against `threshold` after); a lower LSH threshold misses fewer of them.
    return MinHashLSH(threshold=0.7 * threshold, num_perm=NUM_PERM)


def _first_of_near_duplicates(records: list[NumberedRecord], fields: Sequence[str], threshold: float) -> list[bool]:
    index, kept, keep = _lsh(threshold), {}, []
    for i, minhash in enumerate(_minhashes(records, fields)):
        duplicate = any(minhash.jaccard(kept[j]) >= threshold for j in index.query(minhash))
        if not duplicate:
            index.insert(i, minhash)
            kept[i] = minhash
        keep.append(not duplicate)
    return keep


def _normalize(
    records: list[NumberedRecord],
    fields: Sequence[str],
    rules: QualityRules,
    report: QualityReport,
    keep_ends: Sequence[str] = (),
) -> list[NumberedRecord]:
    if rules.normalize_unicode:
        records = _rewrite(records, fields, lambda _, text: _normalize_unicode(text), "normalize_unicode", report)
    if rules.normalize_whitespace:

        def whitespace(name: str, text: str) -> str:
            return _normalize_whitespace(text, keep_ends=name in keep_ends)

        records = _rewrite(records, fields, whitespace, "normalize_whitespace", report)
    return records


def _scrub(
    records: list[NumberedRecord], fields: Sequence[str], report: QualityReport, replace: bool
) -> list[NumberedRecord]:
    """PII in every text field, counted in `report.pii`; replaced by placeholders only when `replace`."""
    counts: Counter = Counter()

    def scrub_and_count(text: str) -> str:
        scrubbed, found = scrub_pii(text)
        counts.update(found)
        return scrubbed

    if replace:
        records = _rewrite(records, fields, lambda _, text: scrub_and_count(text), "scrub_pii", report)
    else:
        for _, record in records:
            for name in fields:
                for text in _strings(record.get(name)):
                    scrub_and_count(text)
    for kind, count in sorted(counts.items()):
        report.pii[kind] = report.pii.get(kind, 0) + count
    report.pii_kept = not replace and bool(counts)
    return records


def clean(
    records: list[NumberedRecord],
    fields: Sequence[str],
    rules: QualityRules,
    report: QualityReport,
    *,
    source: str,
    key_fields: Sequence[str] = (),
    required: Sequence[str] | None = None,
    keep_ends: Sequence[str] = (),
) -> list[NumberedRecord]:
    """The records after normalise -> drop_empty -> scrub_pii -> exact_dedup -> near_dedup; counts go to `report`.

    `fields` are every text the model sees, `required` those a record must have (default: all of them). A required
    field missing (or null) is a schema error naming the line, never a silent drop; drop_empty counts empty required
    text. A required field in no record is a misconfiguration, and an empty result would only fail later, so both raise.
    """
    if not records:
        return []
    required = fields if required is None else required
    for name in required:
        if not any(name in record for _, record in records):
            raise UserError(f"{source}: field '{name}' is in no record; fields there: {sorted(records[0][1])}")
    for number, record in records:
        missing = next((name for name in required if record.get(name) is None), None)
        if missing is not None:
            state = "null" if missing in record else "missing"
            raise UserError(f"{source}:{number}: field '{missing}' is {state} (fields there: {', '.join(record)})")
    removed: dict[str, int] = {}
    records = _normalize(records, fields, rules, report, keep_ends)
    if rules.drop_empty:
        keep = [all(_has_text(record.get(name)) for name in required) for _, record in records]
        records = _filter(records, keep, "drop_empty", report, removed)
    records = _scrub(records, fields, report, replace=rules.scrub_pii)  # counted always, replaced when asked
    if rules.exact_dedup:
        keys = [_key(record, fields, key_fields) for _, record in records]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        keep = [first[key] == i for i, key in enumerate(keys)]
        records = _filter(records, keep, "exact_dedup", report, removed)
    if rules.near_dedup:
        keep = _first_of_near_duplicates(records, fields, rules.near_dedup_threshold)
        records = _filter(records, keep, "near_dedup", report, removed)
    if not records:
        summary = ", ".join(f"{rule} removed {count}" for rule, count in removed.items() if count)
        raise UserError(f"{source}: no records left after the quality rules ({summary})")
    return records


def remove_leaks(
    train: list[NumberedRecord],
    others: Sequence[list[NumberedRecord]],
    fields: Sequence[str],
    rules: QualityRules,
    report: QualityReport,
    *,
    key_fields: Sequence[str] = (),
) -> list[NumberedRecord]:
    """The train records that do not equal (after normalisation) or nearly equal a record of the other splits.

    A val/test example also seen in training inflates the scores; removals count under dropped["leakage"].
    """
    if not rules.leakage_check or not any(others):
        return train
    scratch = QualityReport()  # the normalised copies only serve for comparison; the caller reports its own
    held_out = _normalize([record for split in others for record in split], fields, rules, scratch)
    held_keys = {_key(record, fields, key_fields) for _, record in held_out}
    held_hashes = _minhashes(held_out, fields)
    index = _lsh(rules.leakage_threshold)
    with index.insertion_session() as session:
        for i, minhash in enumerate(held_hashes):
            session.insert(i, minhash)
    normal_train = _normalize(train, fields, rules, scratch)
    keep = [
        _key(record, fields, key_fields) not in held_keys
        and not any(minhash.jaccard(held_hashes[j]) >= rules.leakage_threshold for j in index.query(minhash))
        for (_, record), minhash in zip(normal_train, _minhashes(normal_train, fields))
    ]
    return _filter(train, keep, "leakage", report, {})


def _label(record: NumberedRecord, label_field: str) -> str:
    number, item = record
    if label_field not in item:
        raise UserError(f"record {number}: no '{label_field}' field, which balancing the labels needs")
    return str(item[label_field])


def label_distribution(records: list[NumberedRecord], label_field: str) -> dict[str, int]:
    """How many records carry each label (as a string), sorted by label, for the run summary."""
    return dict(sorted(Counter(_label(record, label_field) for record in records).items()))


def rebalance(
    records: list[NumberedRecord], label_field: str, mode: str, seed: int, report: QualityReport
) -> list[NumberedRecord]:
    """The records with every label downsampled to the rarest label's count or upsampled to the commonest's.

    A skewed train split teaches the majority label; choices come from random.Random(seed), and the records keep
    their order (an upsampled copy follows its original). Removed records count under dropped["rebalance"], added
    copies under modified["rebalance"].
    """
    if mode == "none" or not records:
        return records
    if mode not in ("downsample", "upsample"):
        raise UserError(f"--data.quality.rebalance must be none, downsample or upsample, got {mode!r}")
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_label.setdefault(_label(record, label_field), []).append(i)
    sizes = [len(indices) for indices in by_label.values()]
    target = min(sizes) if mode == "downsample" else max(sizes)
    copies = [1] * len(records)  # how often each record appears in the result
    for label in sorted(by_label):
        indices = by_label[label]
        if mode == "downsample":
            chosen, change = rng.sample(indices, len(indices) - target), -1
        else:
            extra = target - len(indices)
            chosen, change = indices * (extra // len(indices)) + rng.sample(indices, extra % len(indices)), 1
        for i in chosen:
            copies[i] += change
    report.note(report.dropped, "rebalance", [number for (number, _), count in zip(records, copies) if count == 0])
    if mode == "upsample":
        report.note(
            report.modified, "rebalance", [n for (n, _), count in zip(records, copies) for _ in range(count - 1)]
        )
    return [record for record, count in zip(records, copies) for _ in range(count)]
