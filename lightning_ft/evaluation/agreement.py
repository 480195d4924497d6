"""Statistics of human ratings: means with confidence intervals, pairwise win rates, inter-annotator agreement.

Ratings are (annotators, items) arrays of 1-5 scores with NaN where a rating is missing.
"""

from __future__ import annotations

from typing import Any

import krippendorff
import numpy as np
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.weightstats import DescrStatsW

SCORES = (1, 2, 3, 4, 5)
CONFIDENCE = 0.95


def mean_ci(values: np.ndarray) -> dict:
    """Mean and 95% t-interval of per-item values (NaN = not rated); no interval from fewer than two items."""
    values = values[~np.isnan(values)]
    result: dict[str, Any] = {"mean": None, "ci_low": None, "ci_high": None, "n_items": int(values.size)}
    if values.size:
        result["mean"] = float(values.mean())
    if values.size >= 2:
        low, high = DescrStatsW(values).tconfint_mean(alpha=1 - CONFIDENCE)
        result["ci_low"], result["ci_high"] = float(low), float(high)
    return result


def nanmean(values: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Mean over the rated entries only; NaN (not a warning) where nothing was rated."""
    counts = (~np.isnan(values)).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.nansum(values, axis=axis) / counts, np.nan)


def krippendorff_alpha(ratings: np.ndarray, level: str = "ordinal") -> float | None:
    """Krippendorff's alpha of an (annotators, items) array, NaN = missing; None where it is undefined.

    Undefined: fewer than two ratings on every item, or one value throughout (no expected disagreement to compare with).
    """
    pairable = (~np.isnan(ratings)).sum(axis=0) >= 2
    observed = ratings[~np.isnan(ratings)]
    if ratings.shape[0] < 2 or not pairable.any() or np.unique(observed).size < 2:
        return None
    # The whole 1-5 domain, so a scale where nobody used some score still has an ordinal distance between the others.
    value_domain = SCORES if np.isin(observed, SCORES).all() else None
    alpha = krippendorff.alpha(reliability_data=ratings, value_domain=value_domain, level_of_measurement=level)
    return float(alpha)


def fleiss(ratings: np.ndarray) -> tuple[float | None, int]:
    """Fleiss' kappa (categories 1-5) over the items every annotator rated, and how many such items there were.

    Fleiss' kappa needs the same number of raters per item, so items with a missing rating are left out.
    """
    complete = ~np.isnan(ratings).any(axis=0)
    if ratings.shape[0] < 2 or not complete.any():
        return None, int(complete.sum())
    codes = ratings[:, complete].T.astype(int) - 1  # aggregate_raters counts categories 0 .. n_cat-1
    table, _ = aggregate_raters(codes, n_cat=len(SCORES))
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = fleiss_kappa(table, method="fleiss")
    return (None if np.isnan(kappa) else float(kappa)), int(complete.sum())


def win_rates(models: list[str], scores: dict[tuple[str, str], float], prompts: list[str]) -> list[dict]:
    """Per pair, prompts won / tied / lost by the first model on its mean rating; ties count half in the win rate."""
    results = []
    for i, first in enumerate(models):
        for second in models[i + 1 :]:
            wins = ties = losses = 0
            for prompt in prompts:
                a, b = scores.get((prompt, first), np.nan), scores.get((prompt, second), np.nan)
                if np.isnan(a) or np.isnan(b):
                    continue
                if np.isclose(a, b):
                    ties += 1
                elif a > b:
                    wins += 1
                else:
                    losses += 1
            total = wins + ties + losses
            rate = (wins + ties / 2) / total if total else None
            results.append(
                {
                    "model_a": first,
                    "model_b": second,
                    "wins": wins,
                    "ties": ties,
                    "losses": losses,
                    "n_prompts": total,
                    "win_rate": rate,
                }
            )
    return results
