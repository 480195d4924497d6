"""The data report as people read it: rich tables of what every rule kept and dropped, labels, lengths, padding."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    splits = [name for name in ("train", "val", "test") if name in report]

    rows = Table(title="rows per rule")
    rows.add_column("step")
    for name in splits:
        rows.add_column(name, justify="right")
    steps = [("read", lambda e: e["records"])]
    rules = sorted({rule for name in splits for rule in report[name]["quality"]["dropped"]})
    steps += [(f"dropped: {rule}", lambda e, r=rule: e["quality"]["dropped"].get(r, 0)) for rule in rules]
    modified = sorted({rule for name in splits for rule in report[name]["quality"]["modified"]})
    steps += [(f"changed: {rule}", lambda e, r=rule: e["quality"]["modified"].get(r, 0)) for rule in modified]
    pii = sorted({kind for name in splits for kind in report[name]["quality"]["pii"]})
    kept = any(report[name]["quality"].get("pii_kept") for name in splits)  # scrub_pii off: found, not replaced
    what = "PII found and kept" if kept else "PII replaced"
    steps += [(f"{what}: {kind}", lambda e, k=kind: e["quality"]["pii"].get(k, 0)) for kind in pii]
    statuses = ["truncated", "too_short", "overlong_dropped", "no_label_tokens"]
    statuses += [s for s in report[splits[0]]["tokens"] if s not in statuses + ["kept"] and any_count(report, s)]
    steps += [(f"tokens: {status}", lambda e, s=status: e["tokens"].get(s, 0)) for status in statuses]
    unit = report.get("unit", "examples")  # preference data: pairs
    steps += [(f"{unit} kept", lambda e: e["examples"])]
    for label, value in steps:
        rows.add_row(label, *(f"{value(report[name]):,}" for name in splits))
    console.print(rows)

    lengths = Table(title=f"tokens per {unit.removesuffix('s')}")
    lengths.add_column("split")
    keys = ("mean", "p50", "p90", "p99", "max", "tokens")
    for key in keys:
        lengths.add_column(key, justify="right")
    for name in splits:
        lengths.add_row(name, *(f"{report[name]['lengths'][key]:,}" for key in keys))
    console.print(lengths)

    if any("labels" in report[name] for name in splits):
        labels = Table(title="labels")
        labels.add_column("label")
        for name in splits:
            labels.add_column(name, justify="right")
        names = sorted({label for name in splits for label in report[name].get("labels", {})})
        for label in names:
            labels.add_row(label, *(str(report[name].get("labels", {}).get(label, 0)) for name in splits))
        console.print(labels)

    waste = report["train"].get("padding_waste")
    if waste:
        table = Table(title=f"padding waste in train (pad tokens / all tokens); batching used: {report['batching']}")
        for key in waste:
            table.add_column(key, justify="right")
        table.add_row(*(f"{value:.1%}" for value in waste.values()))
        console.print(table)


def any_count(report: dict, status: str) -> bool:
    """Whether any split counts examples of this token status (the rarer ones show only then)."""
    return any(entry["tokens"].get(status) for name, entry in report.items() if name in ("train", "val", "test"))
