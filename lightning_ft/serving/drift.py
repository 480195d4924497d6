"""Input drift: how far what a served model is asked has moved from what it was trained on.

`build_profile` keeps a reference of the training inputs (saved as drift_profile.json in an export folder): a sample
of token lengths (for a two-sample KS test), quantile bins of the lengths with their shares, the shares of the top_k
commonest tokens plus one "other" bucket, and the shares of the labels (classification). `DriftMonitor` keeps the
last `window` requests and scores them against it:

  PSI = sum over bins (a - e) * ln(a / e), with a and e the window's and the profile's shares; by the usual rule of
      thumb < 0.1 is stable, 0.1-0.25 a moderate shift, > 0.25 a significant one (alert).
  KS: scipy.stats.ks_2samp of the window's lengths against the profile's sample; a p-value < 0.01 alerts.

Both sides are the prompts as the model reads them: the training split's prompt tokens (data/profile.py), and each
request rendered through the training's prompt format (data/served.py), as the server renders it; a request an
export records no format for is tokenized by `input_token_ids`.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from lightning_ft.data.profile import PROFILE_FILE, build_profile, length_shares
from lightning_ft.data.served import TrainedPrompts
from lightning_ft.errors import UserError
from lightning_ft.export.hf import EXPORT_RECORD

__all__ = ["DriftMonitor", "build_profile", "drift_report", "input_token_ids", "load_profile", "psi", "save_profile"]

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
OTHER_LABEL = "<other>"


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same bins."""
    # An empty bin has share 0, and ln(0) is undefined: both shares are floored at EPSILON (1e-4), not renormalised.
    # A bin empty on one side then adds a large but finite term (10% of the window in a bin the profile never saw:
    # 0.1 * ln(0.1 / 1e-4) = 0.69), and the floor moves the other bins' shares by at most 1e-4.
    e = np.maximum(np.asarray(expected, dtype=float), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=float), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


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

    def __getstate__(self) -> dict:  # a server's spec travels to its worker processes pickled; a lock does not
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
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
            "length_psi": psi(profile["length_shares"], length_shares(profile["length_edges"], lengths)),
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


def prompt_ids(prompts: TrainedPrompts | None, tokenizer, value: str | list[dict]) -> list[int]:
    """A logged input as the server rendered it (a request it could not render was refused, and is not logged)."""
    if prompts is not None:
        try:
            return prompts.ids(value, tokenizer)
        except UserError:
            pass
    return input_token_ids(tokenizer, value)


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
    record = Path(model) / EXPORT_RECORD
    settings = json.loads(record.read_text(encoding="utf-8")).get("prompts") if record.is_file() else None
    prompts = TrainedPrompts(settings) if settings else None
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
            monitor.observe(prompt_ids(prompts, tokenizer, request["input"]), label)
        scores, alerts = monitor.scores(), monitor.alerts()
        results[version] = {"inputs": len(group), "scores": scores, "alerts": alerts}
        cells = [f"{scores[name]:.3g}" if name in scores else "-" for name in SCORES]
        table.add_row(version, str(len(group)), *cells, str(len(alerts)))
    Console(width=120).print(table)
    for version, result in results.items():
        for alert in result["alerts"]:
            print(f"alert: {version}: {alert}")
    return results
