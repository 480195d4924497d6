"""A profile of the inputs a model was trained on: what serving/drift.py compares live inputs with.

The data module builds it from the training split's prompts, the tokens a model reads before it answers (the
label-masked part of each example; a classifier's whole input), so the server can compare the prompts it renders
like for like. Checkpoints keep it and exports write it as drift_profile.json.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.errors import UserError

PROFILE_FILE = "drift_profile.json"  # an export's copy of its checkpoint's profile
LENGTH_SAMPLE = 2000  # lengths kept for the KS test, and examples read to build a profile
LENGTH_BINS = 10


def length_shares(edges: Sequence[float], lengths: Sequence[int]) -> np.ndarray:
    """Shares of the bins (-inf, e1], (e1, e2], ..., (e_last, inf)."""
    bins = np.searchsorted(np.asarray(edges, dtype=float), np.asarray(lengths), side="left")
    return np.bincount(bins, minlength=len(edges) + 1) / max(len(lengths), 1)


def build_profile(
    lengths: list[int],
    token_ids: Iterable[list[int]],
    labels: list[str] | None = None,
    top_k: int = 200,
    seed: int = 0,
) -> dict:
    """The reference profile of training inputs (JSON-serialisable): `lengths` are their token counts and
    `token_ids` their tokens, both as `input_token_ids` gives them; `labels` their classes, if any."""
    lengths_array = np.asarray(lengths, dtype=np.int64)
    if lengths_array.size == 0:
        raise UserError("no training inputs to build a drift profile from")
    sample = np.random.default_rng(seed).choice(lengths_array, min(LENGTH_SAMPLE, lengths_array.size), replace=False)
    # Lengths repeat (integers), so quantiles can coincide: the bins are the distinct cut points.
    edges = np.unique(np.quantile(lengths_array, np.linspace(0, 1, LENGTH_BINS + 1)[1:-1]))
    counts: Counter = Counter()
    for ids in token_ids:
        counts.update(ids)
    total = max(sum(counts.values()), 1)
    top = counts.most_common(top_k)
    profile = {
        "inputs": int(lengths_array.size),
        "length_sample": sorted(int(n) for n in sample),
        "length_edges": edges.tolist(),
        "length_shares": length_shares(edges, lengths_array).tolist(),
        "token_ids": [int(token) for token, _ in top],
        "token_shares": [count / total for _, count in top],
        "token_other_share": 1 - sum(count for _, count in top) / total,
        "label_shares": None,
    }
    if labels:
        profile["label_shares"] = {label: count / len(labels) for label, count in sorted(Counter(labels).items())}
    return profile


def prompt_tokens(example: dict) -> list[int]:
    """The tokens an example's model reads before its (last) answer, as a server renders a request: all before the
    last run of labelled tokens (of the first sequence, for preference pairs); a classifier's or a raw-text
    example's whole input."""
    ids, labels = list(example["input_ids"]), example["labels"]
    if not isinstance(labels, list):
        return ids
    sequence = example.get("sequence")
    if sequence:
        first = sum(1 for s in sequence if s == 0)
        ids, labels = ids[:first], labels[:first]
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not labelled:
        return ids
    start = labelled[-1]
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return ids[:start] or ids


def training_profile(dataset, label_names: Sequence[str] | None = None, seed: int = 0) -> dict:
    """The profile of up to LENGTH_SAMPLE examples of a tokenized training split (drawn at random when larger)."""
    rows = range(len(dataset))
    if len(dataset) > LENGTH_SAMPLE:
        rows = sorted(random.Random(seed).sample(rows, LENGTH_SAMPLE))
    examples = [dataset[i] for i in rows]
    prompts = [prompt_tokens(example) for example in examples]
    labels = None
    if examples and not isinstance(examples[0]["labels"], list):
        labels = [label_names[e["labels"]] if label_names else str(e["labels"]) for e in examples]
    return build_profile([len(p) for p in prompts], prompts, labels)
