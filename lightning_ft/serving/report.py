"""The serving report of a LOGDIR: a table per model version, plots, and an A/B verdict between two versions.

Per version: requests, error rate, latency and time-to-first-token percentiles (over answered requests: an error
answered in a millisecond says nothing of the model's speed), tokens/s (completion tokens over summed latency), mean
confidence (mean token log-prob of the answers), rated answers, mean feedback score (0-1) and win rate (share liked).

A/B: the baseline is the version that served first in the logs (or the first of --versions), the candidate the other.
Their liked shares are compared by a two-sided Fisher exact test, with a 95% Newcombe (Wilson-score) interval of the
difference; the verdict is "better" or "worse" where p < 0.05, else "no significant difference". Latencies are
compared by a two-sided Mann-Whitney U test (latency distributions are skewed, so not by a t-test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import fisher_exact, mannwhitneyu
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from lightning_ft.errors import UserError
from lightning_ft.serving.logs import is_error, is_liked, rating_score, read_logs

ALPHA = 0.05
PERCENTILES = (50, 95, 99)


def by_version(requests: list[dict]) -> dict[str, list[dict]]:
    """Requests per version, versions in the order they first served."""
    groups: dict[str, list[dict]] = {}
    for request in requests:
        groups.setdefault(request["version"], []).append(request)
    return groups


def _latencies(requests: list[dict]) -> list[float]:
    return [request["latency_s"] for request in requests if not is_error(request)]


def _ratings(requests: list[dict]) -> list[bool | int]:
    return [request["feedback"]["rating"] for request in requests if request.get("feedback")]


def _percentiles(values: list[float], prefix: str) -> dict[str, float | None]:
    points = np.percentile(values, PERCENTILES) if values else [None] * len(PERCENTILES)
    return {f"{prefix}_p{q}": (None if v is None else float(v)) for q, v in zip(PERCENTILES, points, strict=True)}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def version_row(version: str, requests: list[dict]) -> dict:
    answered = [request for request in requests if not is_error(request)]
    latencies = _latencies(requests)
    ratings = _ratings(requests)
    completion = sum(request["completion_tokens"] or 0 for request in answered)
    return {
        "version": version,
        "requests": len(requests),
        "errors": len(requests) - len(answered),
        "error_rate": (len(requests) - len(answered)) / len(requests),
        **_percentiles(latencies, "latency"),
        **_percentiles([r["ttft_s"] for r in answered if r["ttft_s"] is not None], "ttft"),
        "tokens_per_s": completion / sum(latencies) if sum(latencies) > 0 else None,
        "confidence": _mean([r["confidence"] for r in answered if r["confidence"] is not None]),
        "rated": len(ratings),
        "liked": sum(map(is_liked, ratings)),
        "score": _mean([rating_score(rating) for rating in ratings]),
        "win_rate": _mean([float(is_liked(rating)) for rating in ratings]),
    }


def version_table(requests: list[dict]) -> list[dict]:
    return [version_row(version, group) for version, group in by_version(requests).items()]


def pick_versions(groups: dict[str, list[dict]], versions: list[str] | None) -> tuple[str, str] | None:
    """(baseline, candidate): those named, or the two with most traffic, the one that served first as baseline."""
    if versions:
        if len(versions) != 2 or versions[0] == versions[1]:
            raise UserError(f"--versions: name two different versions (BASELINE,CANDIDATE), got {','.join(versions)}")
        for version in versions:
            if version not in groups:
                raise UserError(f"--versions: no requests of version '{version}' (logged: {', '.join(groups)})")
        return versions[0], versions[1]
    if len(groups) < 2:
        return None
    busiest = sorted(groups, key=lambda version: -len(groups[version]))[:2]
    baseline, candidate = sorted(busiest, key=list(groups).index)
    return baseline, candidate


def ab_test(groups: dict[str, list[dict]], baseline: str, candidate: str) -> dict:
    """Liked share and latency of `candidate` against `baseline` (see the module docstring)."""
    result: dict = {"baseline": baseline, "candidate": candidate}
    liked = {v: sum(map(is_liked, _ratings(groups[v]))) for v in (baseline, candidate)}
    rated = {v: len(_ratings(groups[v])) for v in (baseline, candidate)}
    result |= {"liked": liked, "rated": rated}
    if not rated[baseline] or not rated[candidate]:
        result["verdict"] = "not enough feedback"
    else:
        (ka, na), (kb, nb) = ((liked[v], rated[v]) for v in (baseline, candidate))
        low, high = confint_proportions_2indep(kb, nb, ka, na, method="newcomb", compare="diff", alpha=ALPHA)
        _, p_value = fisher_exact([[kb, nb - kb], [ka, na - ka]])
        difference = kb / nb - ka / na
        significant = p_value < ALPHA
        verdict = (
            f"{candidate} {'better' if difference > 0 else 'worse'}" if significant else "no significant difference"
        )
        result |= {"difference": difference, "ci": [float(low), float(high)], "p_value": float(p_value)}
        result["verdict"] = verdict
    fast_a, fast_b = _latencies(groups[baseline]), _latencies(groups[candidate])
    if fast_a and fast_b:
        test = mannwhitneyu(fast_b, fast_a, alternative="two-sided")
        median_a, median_b = float(np.median(fast_a)), float(np.median(fast_b))
        faster = "faster" if median_b < median_a else "slower"
        result["latency"] = {
            "median": {baseline: median_a, candidate: median_b},
            "p_value": float(test.pvalue),
            "verdict": f"{candidate} {faster}" if test.pvalue < ALPHA else "no significant difference",
        }
    return result


def describe_ab(ab: dict) -> list[str]:
    baseline, candidate = ab["baseline"], ab["candidate"]
    head = f"A/B {candidate} vs {baseline}: "
    if "p_value" not in ab:
        counts = ", ".join(f"{v}: {n} rated" for v, n in ab["rated"].items())
        lines = [f"{head}not enough feedback to compare ({counts})"]
    else:
        shares = " vs ".join(
            f"{ab['liked'][v] / ab['rated'][v]:.0%} of {ab['rated'][v]}" for v in (candidate, baseline)
        )
        low, high = ab["ci"]
        detail = f"difference {ab['difference']:+.1%}, 95% CI {low:+.1%} to {high:+.1%}, Fisher p = {ab['p_value']:.3g}"
        lines = [f"{head}{ab['verdict']} (liked {shares}; {detail})"]
    if "latency" in ab:
        latency = ab["latency"]
        medians = " vs ".join(f"{latency['median'][v]:.3g} s" for v in (candidate, baseline))
        lines.append(
            f"latency {candidate} vs {baseline}: {latency['verdict']} "
            f"(median {medians}, Mann-Whitney p = {latency['p_value']:.3g})"
        )
    return lines


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    table = Table(title="serving by version (latency and TTFT over answered requests)")
    heads = ("version", "requests", "errors", "latency s p50/95/99", "TTFT s p50/95/99", "tok/s", "conf")
    for head in (*heads, "rated", "score", "win rate"):
        table.add_column(head, justify="left" if head == "version" else "right")
    for row in rows:
        latency = "/".join(_cell(row[f"latency_p{q}"], ".3g") for q in PERCENTILES)
        ttft = "/".join(_cell(row[f"ttft_p{q}"], ".3g") for q in PERCENTILES)
        table.add_row(
            row["version"],
            str(row["requests"]),
            f"{row['error_rate']:.1%}",
            latency,
            ttft,
            _cell(row["tokens_per_s"], ".1f"),
            _cell(row["confidence"], ".2f"),
            str(row["rated"]),
            _cell(row["score"], ".2f"),
            _cell(row["win_rate"], ".0%"),
        )
    Console(width=max(shutil.get_terminal_size((140, 24)).columns, 100)).print(table)


def pyplot():
    """matplotlib drawing to files only (no display on a server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(groups: dict[str, list[dict]], path: Path) -> Path:
    """The latency distribution (empirical CDF) of each version's answered requests."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    figure, axis = plt.subplots(figsize=(7, 4))
    for version, requests in groups.items():
        if _latencies(requests):
            axis.ecdf(_latencies(requests), label=f"{version} (n={len(_latencies(requests))})")
    axis.set(title="latency per version", xlabel="end-to-end latency (s)", ylabel="share of requests at most")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.2, not 2x10^-1
    axis.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "25" else ""))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_feedback(rows: list[dict], path: Path) -> Path:
    """Win rate with its 95% Wilson interval, and mean feedback score, per version."""
    plt = pyplot()
    rated = [row for row in rows if row["rated"]]
    figure, (wins, scores) = plt.subplots(1, 2, figsize=(9, 4))
    names = [row["version"] for row in rated]
    rates = np.array([row["win_rate"] for row in rated])
    bounds = np.array([proportion_confint(row["liked"], row["rated"], method="wilson") for row in rated]).reshape(-1, 2)
    wins.bar(names, rates, yerr=[rates - bounds[:, 0], bounds[:, 1] - rates], capsize=4, color="tab:green")
    wins.set(title="win rate (liked share, 95% CI)", ylim=(0, 1), ylabel="share liked")
    bars = scores.bar(names, [row["score"] for row in rated], color="tab:blue")
    scores.bar_label(bars, labels=[f"n={row['rated']}" for row in rated], padding=2)
    scores.set(title="mean feedback score", ylim=(0, 1.1), ylabel="score (0-1)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def monitor_report(logdir: str, output: str | None = None, versions: list[str] | None = None) -> dict:
    """Print the table and the A/B verdict of LOGDIR; with `output`, also write report.json and the plots there."""
    out = Path(output) if output else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--output: {out} is a file; give a folder for the report and plots")
    logs = read_logs(logdir)
    if not logs.requests:
        raise UserError(f"{logdir}: the requests log is empty")
    groups = by_version(logs.requests)
    rows = version_table(logs.requests)
    pair = pick_versions(groups, versions)
    report = {"requests": len(logs.requests), "unmatched_feedback": logs.unmatched, "versions": rows, "ab": None}
    print_table(rows)
    if logs.unmatched:
        print(f"{logs.unmatched} rated responses are not in the requests log (rotated away?) and are left out")
    if pair:
        report["ab"] = ab_test(groups, *pair)
        print("\n".join(describe_ab(report["ab"])))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        images = [plot_latency(groups, out / "latency.png")]
        if any(row["rated"] for row in rows):
            images.append(plot_feedback(rows, out / "feedback.png"))
        (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report: {out / 'report.json'}; plots: {', '.join(image.name for image in images)}")
    return report
