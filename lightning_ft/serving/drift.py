"""Input drift: how far what a served model is asked has moved from what it was trained on.

`build_profile` keeps a reference of the training inputs (saved as drift_profile.json in an export folder): a sample
of token lengths (for a two-sample KS test), quantile bins of the lengths with their shares, the shares of the top_k
commonest tokens plus one "other" bucket, and the shares of the labels (classification). `DriftMonitor` keeps the
last `window` requests and scores them against it:

  PSI = sum over bins (a - e) * ln(a / e), with a and e the window's and the profile's shares; by the usual rule of
      thumb < 0.1 is stable, 0.1-0.25 a moderate shift, > 0.25 a significant one (alert).
  KS: scipy.stats.ks_2samp of the window's lengths against the profile's sample; a p-value < 0.01 alerts.

Inputs are tokenized by `input_token_ids` on both sides (profile and server), so that lengths compare like for like.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from lightning_ft.errors import UserError

PROFILE_FILE = "drift_profile.json"
PSI_ALERT = 0.25
KS_P_ALERT = 0.01
DEFAULT_THRESHOLDS = {
    "length_psi": PSI_ALERT,
    "token_psi": PSI_ALERT,
    "label_psi": PSI_ALERT,
    "length_ks_p": KS_P_ALERT,
}
SCORES = ("length_psi", "length_ks", "length_ks_p", "token_psi", "label_psi")
EPSILON = 1e-4
LENGTH_SAMPLE = 2000
LENGTH_BINS = 10
OTHER_LABEL = "<other>"


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same bins."""
    # An empty bin has share 0, and ln(0) is undefined: both shares are floored at EPSILON (1e-4), not renormalised.
    # A bin empty on one side then adds a large but finite term (10% of the window in a bin the profile never saw:
    # 0.1 * ln(0.1 / 1e-4) = 0.69), and the floor moves the other bins' shares by at most 1e-4.
    e = np.maximum(np.asarray(expected, dtype=float), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=float), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _length_shares(edges: Sequence[float], lengths: Sequence[int]) -> np.ndarray:
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
        "length_shares": _length_shares(edges, lengths_array).tolist(),
        "token_ids": [int(token) for token, _ in top],
        "token_shares": [count / total for _, count in top],
        "token_other_share": 1 - sum(count for _, count in top) / total,
        "label_shares": None,
    }
    if labels:
        profile["label_shares"] = {label: count / len(labels) for label, count in sorted(Counter(labels).items())}
    return profile


def save_profile(folder: str | Path, profile: dict) -> Path:
    path = Path(folder) / PROFILE_FILE
    path.write_text(json.dumps(profile), encoding="utf-8")
    return path


def load_profile(folder: str | Path) -> dict:
    path = Path(folder) / PROFILE_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {PROFILE_FILE} (the drift profile an export writes)")
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable drift profile ({err})") from None
    needed = {"length_sample", "length_edges", "length_shares", "token_ids", "token_shares", "token_other_share"}
    missing = sorted(needed - set(profile)) if isinstance(profile, dict) else sorted(needed)
    if missing:
        raise UserError(f"{path}: not a drift profile (missing {', '.join(missing)})")
    return profile


def input_token_ids(tokenizer, value: str | list[dict]) -> list[int]:
    """Token ids of a request's input as the model sees it: chat turns through the tokenizer's chat template (with
    the assistant header) if it has one, else their contents joined by newlines; text as it is."""
    if isinstance(value, list):
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=True)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        value = "\n".join(turn["content"] for turn in value)
    return tokenizer(value)["input_ids"]


class DriftMonitor:
    """Drift scores of the last `window` observed inputs against a profile; safe to feed from several threads."""

    def __init__(self, profile: dict, window: int = 200) -> None:
        if window < 1:
            raise UserError(f"drift window must be at least 1 request, got {window}")
        self.profile = profile
        self._index = {token: i for i, token in enumerate(profile["token_ids"])}  # else the "other" bucket
        self._lengths: deque[int] = deque(maxlen=window)
        self._tokens: deque[np.ndarray] = deque(maxlen=window)
        self._labels: deque[str | None] = deque(maxlen=window)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lengths)

    def observe(self, token_ids: list[int], label: str | None = None) -> None:
        buckets = [self._index.get(token, len(self._index)) for token in token_ids]
        counts = np.bincount(np.asarray(buckets, dtype=np.int64), minlength=len(self._index) + 1)
        with self._lock:
            self._lengths.append(len(token_ids))
            self._tokens.append(counts)
            self._labels.append(label)

    def scores(self) -> dict[str, float]:
        """length_psi, length_ks (the KS statistic), length_ks_p, token_psi, and label_psi where the profile has
        labels and the window some; empty before the first observation."""
        with self._lock:
            lengths, tokens, labels = list(self._lengths), list(self._tokens), list(self._labels)
        if not lengths:
            return {}
        profile = self.profile
        ks = ks_2samp(lengths, profile["length_sample"])
        scores = {
            "length_psi": psi(profile["length_shares"], _length_shares(profile["length_edges"], lengths)),
            "length_ks": float(ks.statistic),
            "length_ks_p": float(ks.pvalue),
        }
        token_counts = np.sum(tokens, axis=0)
        if token_counts.sum():
            expected = [*profile["token_shares"], profile["token_other_share"]]
            scores["token_psi"] = psi(expected, token_counts / token_counts.sum())
        seen = [label for label in labels if label is not None]
        if profile.get("label_shares") and seen:
            known = profile["label_shares"]
            counts = Counter(label if label in known else OTHER_LABEL for label in seen)
            names = [*known, OTHER_LABEL]  # a label training never had is its own bin, empty in the profile
            scores["label_psi"] = psi([known.get(n, 0.0) for n in names], [counts[n] / len(seen) for n in names])
        return scores

    def alerts(self, threshold: dict[str, float] | float | None = None) -> list[str]:
        """One line per score past its threshold, e.g. "token_psi 0.41 > 0.25". `threshold`: a number sets every
        PSI threshold; a dict sets those it names (a *_p score alerts below its threshold, the others above)."""
        limits = dict(DEFAULT_THRESHOLDS)
        if isinstance(threshold, dict):
            unknown = sorted(set(threshold) - set(SCORES))
            if unknown:
                raise UserError(f"drift threshold for unknown score '{unknown[0]}' (scores: {', '.join(SCORES)})")
            limits |= threshold
        elif threshold is not None:
            limits |= {name: float(threshold) for name in limits if name.endswith("_psi")}
        lines = []
        for name, value in self.scores().items():
            limit = limits.get(name)
            if limit is None:
                continue
            if name.endswith("_p") and value < limit:
                lines.append(f"{name} {value:.2g} < {limit:g}")
            elif not name.endswith("_p") and value > limit:
                lines.append(f"{name} {value:.2f} > {limit:g}")
        return lines


def drift_report(logdir: str, model: str, window: int | None = None) -> dict[str, dict]:
    """Drift scores and alerts of each version's logged inputs (the last `window` of each, or all) against the
    profile in the export folder `model`, tokenized with its tokenizer; printed as a table."""
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    from lightning_ft.errors import first_line
    from lightning_ft.serving.logs import read_logs

    if window is not None and window < 1:
        raise UserError(f"--window must be at least 1 request, got {window}")
    profile = load_profile(model)
    requests = read_logs(logdir).requests
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise UserError(f"--model {model}: cannot load its tokenizer ({first_line(err)})") from None
    groups: dict[str, list[dict]] = {}
    for request in requests:
        groups.setdefault(request["version"], []).append(request)
    results = {}
    table = Table(title=f"input drift against {Path(model) / PROFILE_FILE}")
    for head in ("version", "inputs", *SCORES, "alerts"):
        table.add_column(head, justify="left" if head in ("version", "alerts") else "right")
    for version, group in groups.items():
        group = group[-window:] if window else group
        monitor = DriftMonitor(profile, window=len(group))
        for request in group:
            output = request.get("output")
            label = max(output, key=output.get) if request["endpoint"] == "classify" and output else None
            monitor.observe(input_token_ids(tokenizer, request["input"]), label)
        scores, alerts = monitor.scores(), monitor.alerts()
        results[version] = {"inputs": len(group), "scores": scores, "alerts": alerts}
        cells = [f"{scores[name]:.3g}" if name in scores else "-" for name in SCORES]
        table.add_row(version, str(len(group)), *cells, str(len(alerts)))
    Console(width=120).print(table)
    for version, result in results.items():
        for alert in result["alerts"]:
            print(f"alert: {version}: {alert}")
    return results
