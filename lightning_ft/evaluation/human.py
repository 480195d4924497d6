"""Human evaluation: export blinded rating sheets of several models' outputs, then report on the filled-in sheets.

`lightning-ft human-eval export` picks N prompts and lists every model's output under a neutral label (A, B, ...)
shuffled per prompt; the key that unblinds the labels is a separate file. `lightning-ft human-eval report` reads the
annotators' sheets back and reports per-model means with 95% confidence intervals, pairwise win rates and
inter-annotator agreement (Krippendorff's alpha, ordinal; Fleiss' kappa).

Statistics, and why:
- Confidence intervals are t-intervals over items after averaging the annotators of each item. Items (prompts) are
  the sampled unit and one item's ratings are correlated, so treating every rating as independent would make the
  interval too narrow; the t-interval is deterministic and sound for small N, where a bootstrap is unstable.
- A missing rating (empty cell) is left out: an item's mean is over the annotators who rated it, and an item nobody
  rated on a scale does not count for that scale. Krippendorff's alpha uses every item with two or more ratings;
  Fleiss' kappa needs the same number of raters per item, so it uses only items rated by every annotator.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import string
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lightning_ft.data.sources import read_jsonl, read_records
from lightning_ft.errors import UserError
from lightning_ft.evaluation.agreement import (
    CONFIDENCE,
    SCORES,
    fleiss,
    krippendorff_alpha,
    mean_ci,
    nanmean,
    win_rates,
)
from lightning_ft.files import staged_folder

SCALES = ("relevance", "coherence", "fluency", "factuality", "helpfulness")  # each scored 1-5
COLUMNS = ("item_id", "prompt", "label", "output", *SCALES, "comment")
SCALE_GUIDE = {
    "relevance": ("Does the output address the prompt?", "ignores the prompt", "fully on point"),
    "coherence": ("Is it well organised and logically consistent?", "incoherent", "clear and consistent"),
    "fluency": ("Is the language grammatical and natural?", "hard to read", "reads like fluent writing"),
    "factuality": ("Are its claims correct (no invented facts)?", "mostly false", "no errors found"),
    "helpfulness": ("Would it help the person who asked?", "useless or harmful", "as helpful as it could be"),
}


# --------------------------------------------------------------------------------------------------- export


def _read_outputs(name: str, path: Path) -> dict[str, tuple[int, str, str]]:
    """One model's generations as id -> (line, prompt, output); ids compare as strings, so 7 and "7" are one id.

    Every malformed line is a UserError naming the file and line, because a silently skipped line would bias the sample.
    """
    if not path.is_file():
        raise UserError(f"--outputs {name}={path}: no such file")
    rows: dict[str, tuple[int, str, str]] = {}
    for line_number, row in read_jsonl(path):
        valid_id = isinstance(row.get("id"), str | int) and not isinstance(row["id"], bool)
        if not valid_id or not isinstance(row.get("prompt"), str) or not isinstance(row.get("output"), str):
            raise UserError(f"{path}:{line_number}: needs 'id' (string or integer), 'prompt' and 'output' (strings)")
        key = str(row["id"])
        if key in rows:
            raise UserError(f"{path}:{line_number}: id '{key}' repeats line {rows[key][0]}")
        rows[key] = (line_number, row["prompt"], row["output"])
    if not rows:
        raise UserError(f"{path}: no generations")
    return rows


def _check_same_prompts(generations: dict[str, dict], paths: dict[str, Path]) -> None:
    """All models must answer the same prompts: otherwise the per-prompt comparison compares different tasks."""
    first = next(iter(generations))
    reference, reference_path = generations[first], paths[first]
    for name, rows in generations.items():
        path = paths[name]
        for key, (line, prompt, _) in rows.items():
            if key not in reference:
                raise UserError(f"{path}:{line}: id '{key}' is not in {reference_path}")
            if prompt != reference[key][1]:
                raise UserError(
                    f"{path}:{line}: id '{key}' has a different prompt than {reference_path} line {reference[key][0]}"
                )
        for key, (line, _, _) in reference.items():
            if key not in rows:
                raise UserError(f"{path}: no output for id '{key}' ({reference_path} line {line} has it)")


def _label(index: int) -> str:
    """Spreadsheet-style labels (A..Z, AA, AB, ...), so any number of models gets a neutral label."""
    label = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        label = string.ascii_uppercase[remainder] + label
    return label


def _write_csv(path: Path, rows: list[dict]) -> None:
    """UTF-8 with a byte-order mark: Excel otherwise misreads non-ASCII text; the reader accepts both."""
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _write_readme(path: Path, annotators: int) -> None:
    """The annotators' instructions: what each 1-5 scale means, so ratings are comparable across people."""
    sheets = "sheet.csv" if annotators == 1 else f"your own copy (sheet_1.csv ... sheet_{annotators}.csv)"
    lines = [
        "Human evaluation: rating instructions",
        "",
        f"Fill in {sheets}.",
        "Each row is one answer (output) to a prompt. The answers to a prompt are labelled A, B, ...; the labels",
        "say nothing about where an answer came from, and change from prompt to prompt.",
        "",
        "Give every answer a whole number from 1 (worst) to 5 (best) on each of the five scales below. Leave a",
        "cell empty if you cannot judge it. Use the comment column for anything worth saying. Do not edit the",
        "item_id column, and do not add or delete rows.",
        "",
    ]
    for scale, (question, worst, best) in SCALE_GUIDE.items():
        lines += [f"{scale}: {question}", f"  1 = {worst}; 3 = acceptable with clear flaws; 5 = {best}", ""]
    lines += ["Rate each answer on its own merits; compare answers to the same prompt only to stay consistent."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _distinct_orders(groups: int, copies: int, rng: random.Random) -> list[list[int]]:
    """One shuffled prompt order per annotator, different from each other and from sheet.csv where possible.

    Different orders spread fatigue and order effects over the prompts instead of hitting the same ones every time.
    """
    orders: list[list[int]] = [list(range(groups))]  # sheet.csv's order
    for _ in range(copies):
        for _attempt in range(100):
            order = rng.sample(range(groups), groups)
            if order not in orders:
                break
        orders.append(order)
    return orders[1:]


def export_sheet(outputs: dict[str, Path], n: int, seed: int, out: Path, annotators: int = 1) -> None:
    """Write the blinded sheets, the unblinding key and the instructions to `out`, all or nothing.

    Everything is checked before anything is written, and the files are written to a temporary folder renamed to `out`.
    """
    if not outputs:
        raise UserError("--outputs: give at least one NAME=FILE")
    if n < 1:
        raise UserError(f"--n {n}: must be at least 1")
    if annotators < 1:
        raise UserError(f"--annotators {annotators}: must be at least 1")
    if out.exists():
        raise UserError(f"--out {out}: already exists; choose a new folder (an export is never overwritten)")
    paths = {name: Path(path) for name, path in outputs.items()}
    generations = {name: _read_outputs(name, path) for name, path in paths.items()}
    _check_same_prompts(generations, paths)
    models = list(generations)
    reference = generations[models[0]]
    prompt_ids = list(reference)  # file order of the first file
    if n > len(prompt_ids):
        raise UserError(f"--n {n}: the outputs have only {len(prompt_ids)} prompts")

    rng = random.Random(seed)
    chosen = set(rng.sample(prompt_ids, n))
    selected = [key for key in prompt_ids if key in chosen]
    # A per-export tag in every item id: a sheet checked against another export's key fails loudly, not silently.
    fingerprint = json.dumps([seed, models, [[generations[m][k][2] for m in models] for k in selected]])
    tag = hashlib.sha256(fingerprint.encode()).hexdigest()[:6]
    width = len(str(n))
    groups: list[list[dict]] = []
    items: dict[str, dict] = {}
    for index, key in enumerate(selected, start=1):
        shuffled = rng.sample(models, len(models))
        group = []
        for position, model in enumerate(shuffled):
            label = _label(position)
            item_id = f"{index:0{width}d}{label}-{tag}"
            items[item_id] = {"model": model, "prompt_id": key, "label": label}
            row = {
                "item_id": item_id,
                "prompt": reference[key][1],
                "label": label,
                "output": generations[model][key][2],
            }
            group.append(row | {scale: "" for scale in SCALES} | {"comment": ""})
        groups.append(group)
    key_data = {
        "tag": tag,
        "seed": seed,
        "n": n,
        "annotators": annotators,
        "scales": list(SCALES),
        "models": models,
        "files": {name: str(path) for name, path in paths.items()},
        "items": items,
    }

    with staged_folder(out) as staging:
        rows = [row for group in groups for row in group]
        _write_csv(staging / "sheet.csv", rows)
        jsonl_rows = [row | {scale: None for scale in SCALES} for row in rows]
        (staging / "sheet.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl_rows), encoding="utf-8")
        if annotators > 1:
            for copy, order in enumerate(_distinct_orders(len(groups), annotators, rng), start=1):
                _write_csv(staging / f"sheet_{copy}.csv", [row for i in order for row in groups[i]])
        (staging / "key.json").write_text(json.dumps(key_data, indent=2), encoding="utf-8")
        _write_readme(staging / "README.txt", annotators)


# --------------------------------------------------------------------------------------------------- report


def load_key(path: Path) -> dict:
    """The unblinding key written by `export`; checked so a wrong file is one clear error, not a KeyError later."""
    if not path.is_file():
        raise UserError(f"--key {path}: no such file")
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--key {path}: not valid JSON ({err})") from None
    items = key.get("items") if isinstance(key, dict) else None
    if not isinstance(items, dict) or not isinstance(key.get("models"), list):
        raise UserError(f"--key {path}: not a key.json written by `lightning-ft human-eval export`")
    return key


_INTEGER = re.compile(r"\s*([0-9]+)(\.0*)?\s*")


def _score(value: Any, where: str) -> int | None:
    """A rating as an int 1-5, or None when empty; "4.0" and 4.0 pass because spreadsheets and pandas write them."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and (match := _INTEGER.fullmatch(value)):
        number = int(match.group(1))
    if number not in SCORES:
        raise UserError(f"{where}: {value!r} is not an integer 1-5 (leave the cell empty if missing)")
    return number


def _sheet_rows(path: Path) -> list[tuple[str, dict]]:
    """(position, row) pairs: "row N" as a spreadsheet numbers it for CSV (header = row 1), "line N" for JSONL.

    Read by the data layer's readers, which check the file and number rows by the line they start on.
    """
    kind = path.suffix.lower()
    if kind not in (".csv", ".jsonl"):
        raise UserError(f"{path}: a sheet is .csv or .jsonl")
    records = read_records(str(path), "sheet")
    if kind == ".csv":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        if not lines:
            raise UserError(f"{path}: empty sheet (no header row)")
        columns = next(csv.reader(lines[:1]))
        missing = [column for column in ("item_id", *SCALES) if column not in columns]
        if missing:
            raise UserError(f"{path}: no '{missing[0]}' column (a sheet needs item_id and {', '.join(SCALES)})")
    return [(f"{'row' if kind == '.csv' else 'line'} {number}", row) for number, row in records]


def read_sheet(path: Path, key: dict) -> list[dict]:
    """One annotator's filled-in sheet as [{item_id, model, prompt_id, scores: {scale: int | None}, comment}].

    Every bad cell is a UserError naming the sheet, row and column, so the annotator can fix it where it is.
    """
    if not path.is_file():
        raise UserError(f"{path}: no such sheet")
    ratings: list[dict] = []
    seen: dict[str, str] = {}
    column = "column" if path.suffix.lower() == ".csv" else "field"
    for position, row in _sheet_rows(path):
        item_id = str(row.get("item_id") or "").strip()
        if not item_id:
            if all(value in (None, "") for value in row.values()):
                continue  # an empty row left by a spreadsheet
            raise UserError(f"{path} {position}, column 'item_id': empty")
        if item_id not in key["items"]:
            raise UserError(
                f"{path} {position}, column 'item_id': unknown item '{item_id}' (is the sheet from another export?)"
            )
        if item_id in seen:
            raise UserError(f"{path} {position}, column 'item_id': item '{item_id}' repeats {seen[item_id]}")
        seen[item_id] = position
        scores = {scale: _score(row.get(scale), f"{path} {position}, {column} '{scale}'") for scale in SCALES}
        entry = key["items"][item_id]
        ratings.append(
            {
                "item_id": item_id,
                "model": entry["model"],
                "prompt_id": entry["prompt_id"],
                "scores": scores,
                "comment": str(row.get("comment") or ""),
            }
        )
    return ratings


def report(key_path: Path, sheets: list[Path]) -> dict:
    """Unblind the annotators' sheets and compute means with CIs, pairwise win rates and agreement per scale.

    Each sheet is one annotator; the result is plain JSON (None where a statistic is undefined).
    """
    if not sheets:
        raise UserError("give at least one filled-in sheet")
    resolved = [Path(sheet).resolve() for sheet in sheets]
    for index, sheet in enumerate(resolved):
        if sheet in resolved[:index]:
            raise UserError(f"{sheets[index]}: given twice (each sheet is one annotator)")
    key = load_key(Path(key_path))
    item_ids = list(key["items"])
    column = {item_id: index for index, item_id in enumerate(item_ids)}
    ratings = np.full((len(sheets), len(item_ids), len(SCALES)), np.nan)
    for annotator, sheet in enumerate(sheets):
        for row in read_sheet(Path(sheet), key):
            ratings[annotator, column[row["item_id"]]] = [np.nan if s is None else s for s in row["scores"].values()]

    models = list(key["models"])
    item_models = np.array([key["items"][i]["model"] for i in item_ids])
    per_item = nanmean(ratings, axis=0)  # (items, scales): annotators averaged first
    means = {}
    for model in models:
        rows = per_item[item_models == model]
        means[model] = {scale: mean_ci(rows[:, s]) for s, scale in enumerate(SCALES)}
        means[model]["overall"] = mean_ci(nanmean(rows, axis=1))

    pooled = nanmean(ratings, axis=(0, 2))  # per item: mean over annotators and scales
    item_scores = {(key["items"][i]["prompt_id"], key["items"][i]["model"]): pooled[c] for i, c in column.items()}
    prompts = list(dict.fromkeys(key["items"][i]["prompt_id"] for i in item_ids))

    agreement = {}
    for s, scale in enumerate(SCALES):
        kappa, complete = fleiss(ratings[:, :, s])
        agreement[scale] = {
            "krippendorff_alpha_ordinal": krippendorff_alpha(ratings[:, :, s]),
            "alpha_items": int(((~np.isnan(ratings[:, :, s])).sum(axis=0) >= 2).sum()),
            "fleiss_kappa": kappa,
            "fleiss_items": complete,
        }
    return {
        "key": str(key_path),
        "sheets": [str(sheet) for sheet in sheets],
        "annotators": len(sheets),
        "models": models,
        "scales": list(SCALES),
        "ratings": {"given": int((~np.isnan(ratings)).sum()), "possible": int(ratings.size)},
        "methods": {
            "ci": f"{CONFIDENCE:.0%} t-interval over items, after averaging the annotators of each item",
            "missing": "left out; Fleiss' kappa uses only items rated by every annotator",
            "win_rate": "per prompt, mean over scales and annotators; (wins + ties / 2) / prompts",
        },
        "means": means,
        "win_rates": win_rates(models, item_scores, prompts),
        "agreement": agreement,
    }


def _format_mean(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["ci_low"] is None:
        return f"{stats['mean']:.2f}"
    return f"{stats['mean']:.2f} [{stats['ci_low']:.2f}, {stats['ci_high']:.2f}]"


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(result: dict, console: Console | None = None) -> None:
    """The report as rich tables: means with CIs, win rates, agreement."""
    console = console or Console()
    means = Table(title=f"mean rating (1-5) with {result['methods']['ci']}")
    means.add_column("model")
    for column in (*result["scales"], "overall"):
        means.add_column(column, justify="right")
    for model in result["models"]:
        stats = result["means"][model]
        means.add_row(model, *(_format_mean(stats[c]) for c in (*result["scales"], "overall")))
    console.print(means)

    if result["win_rates"]:
        wins = Table(title="win rate of model A over model B (per prompt; ties count half)")
        for column in ("model A", "model B", "wins", "ties", "losses", "win rate"):
            wins.add_column(column, justify="left" if column.startswith("model") else "right")
        for pair in result["win_rates"]:
            rate = "-" if pair["win_rate"] is None else f"{pair['win_rate']:.1%}"
            wins.add_row(
                pair["model_a"], pair["model_b"], *map(str, (pair["wins"], pair["ties"], pair["losses"])), rate
            )
        console.print(wins)

    agreement = Table(title=f"agreement between {result['annotators']} annotator(s)")
    for column in ("scale", "Krippendorff alpha (ordinal)", "items", "Fleiss kappa", "items rated by all"):
        agreement.add_column(column, justify="left" if column == "scale" else "right")
    for scale, stats in result["agreement"].items():
        agreement.add_row(
            scale,
            _format(stats["krippendorff_alpha_ordinal"]),
            str(stats["alpha_items"]),
            _format(stats["fleiss_kappa"]),
            str(stats["fleiss_items"]),
        )
    console.print(agreement)
    console.print(f"ratings given: {result['ratings']['given']} of {result['ratings']['possible']}")
