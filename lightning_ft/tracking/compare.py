"""Comparing runs (`lightning-ft compare`, and the end of a sweep).

A table of what differs between the runs (config keys whose values differ, method, trainable %, metrics, tokens/s,
peak memory, status), best first by the chosen metric; loss curves overlaid and final metrics as bars (PNG,
matplotlib); an HTML or Markdown report embedding both. Runs are read from their run dirs: `run.json` and the
CSV logger's `metrics.csv` or TensorBoard's event files, or a W&B offline run dir (through `wandb leet inspect`,
since wandb writes no summary file offline), or with --wandb from the W&B API. A dir without a record, or a failed
or unfinished run, is a row that says so, never a crash.
"""

from __future__ import annotations

import csv
import glob
import html
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightning_ft.errors import UserError, first_line
from lightning_ft.tracking.record import UnreadableRecord, current_status, died_at, read_run_record

# Keys that differ between any two runs without saying anything about them.
PER_RUN_KEYS = ("default_root_dir", "dirpath", "save_dir", "ckpt_path", "init_args.id", "init_args.version")
LOWER_IS_BETTER = ("loss", "perplexity", "error", "wer", "cer")
# Lightning logs a step's metrics, and the validation after it, under the count of steps before it (the first at 0);
# the console and the run record count steps done ("validation at step 2"): curves are plotted by steps done.
LOGGED_STEP_OFFSET = 1
FIXED_COLUMNS = ("run", "status", "method", "trainable %", "tokens/s", "peak RSS MB", "checkpoint MB")  # + metric
CELL_CHARS = 24  # a console cell longer than this is cut (the report keeps it whole)


@dataclass
class Run:
    name: str
    path: Path
    record: dict | None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> (step, value)

    unreadable: str | None = None  # why its run.json could not be read

    @property
    def status(self) -> str:
        if self.unreadable:
            return "unreadable run.json"
        if not self.record:
            return "no run record"
        status = current_status(self.record)
        return died_at(self.record) if status == "died" else status

    def metric(self, name: str) -> float | None:
        """Best value when the run tracked it as best, else the final one, else the last logged point."""
        metrics = (self.record or {}).get("metrics", {})
        for source in (metrics.get("best", {}), metrics.get("final", {})):
            if name in source:
                return source[name]
        points = self.curves.get(name)
        return points[-1][1] if points else None


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


# ------------------------------------------------------------------------------------------------ reading runs


def find_runs(patterns: list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(pattern)) or [Path(pattern)]
        found += [m for m in matches if m not in found]
    missing = [str(path) for path in found if not path.is_dir()]
    if missing:
        raise UserError(f"compare: not a directory: {', '.join(missing)}")
    return found


def load_run(path: Path) -> Run:
    try:
        record, unreadable = read_run_record(path), None
    except UnreadableRecord as err:  # one bad run dir is a row that says so and a warning, the others still compare
        record, unreadable = None, str(err)
        print(f"warning: {err}", file=sys.stderr)
    run = Run(name=path.name, path=path, record=record, unreadable=unreadable)
    csv_files = sorted(path.glob("**/metrics.csv"))
    event_files = sorted(path.glob("**/events.out.tfevents.*"))
    wandb_dirs = sorted(p.parent for p in path.glob("**/*.wandb"))
    if csv_files:
        run.curves = read_csv_curves(csv_files)
    elif event_files:
        run.curves = read_tensorboard_curves(sorted({file.parent for file in event_files}))
    elif wandb_dirs:
        run.curves, summary = read_wandb_offline(wandb_dirs[-1])
        if record is None and summary:
            run.record = {"status": summary.get("state", "?"), "config": summary.get("config")}
    return run


def read_csv_curves(files: list[Path]) -> dict[str, list[tuple[int, float]]]:
    """Every numeric column of Lightning's CSV logs, by step; files of a resumed run (versions) are joined."""
    curves: dict[str, dict[int, float]] = {}
    for file in files:
        with file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                step = row.get("step")
                if not step:
                    continue
                for name, value in row.items():
                    if name not in ("step", "epoch") and value not in ("", None):
                        curves.setdefault(name, {})[int(float(step)) + LOGGED_STEP_OFFSET] = float(value)
    return {name: sorted(points.items()) for name, points in curves.items()}


def read_tensorboard_curves(folders: list[Path]) -> dict[str, list[tuple[int, float]]]:
    """Scalars of TensorBoard event files by step (tensorboard's own reader); folders of a resumed run joined."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    for folder in folders:
        events = EventAccumulator(str(folder))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag != "epoch":
                curves.setdefault(tag, {}).update(
                    {event.step + LOGGED_STEP_OFFSET: event.value for event in events.Scalars(tag)}
                )
    return {name: sorted(points.items()) for name, points in curves.items()}


def read_wandb_offline(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict]:
    """History and summary of a W&B offline run, read with `wandb leet inspect` (JSON)."""
    wandb = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"]
    try:
        history = subprocess.run([*wandb, str(run_dir)], check=True, capture_output=True, text=True, timeout=120)
        summary = subprocess.run([*wandb, "--summary", str(run_dir)], check=True, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError):
        return {}, {}
    curves: dict[str, dict[int, float]] = {}
    for line in history.stdout.splitlines():
        item = json.loads(line).get("history", {}).get("item") if '"history"' in line else None
        if not item or "trainer/global_step" not in item:
            continue
        step = int(item["trainer/global_step"]) + LOGGED_STEP_OFFSET
        for name, value in item.items():
            if not name.startswith(("_", "trainer/")) and isinstance(value, int | float) and name != "epoch":
                curves.setdefault(name, {})[step] = float(value)
    try:
        details = json.loads(summary.stdout)
    except json.JSONDecodeError:
        details = {}
    return {name: sorted(points.items()) for name, points in curves.items()}, details


# ------------------------------------------------------------------------------------------------ the table


def flatten(config, prefix: str = "") -> dict[str, object]:
    if isinstance(config, list) and any(isinstance(item, dict) for item in config):  # e.g. several loggers
        config = dict(enumerate(config))
    if isinstance(config, dict):
        return {k: v for key, value in config.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): json.dumps(config) if isinstance(config, list) else config}


def differing_config(runs: list[Run]) -> list[str]:
    flat = [flatten((run.record or {}).get("config") or {}) for run in runs if run.record]
    keys = sorted(set().union(*flat)) if flat else []
    return [
        key
        for key in keys
        if not key.endswith(PER_RUN_KEYS) and len({json.dumps(config.get(key), default=str) for config in flat}) > 1
    ]


def rows(runs: list[Run], metric: str) -> tuple[list[str], list[list[str]]]:
    keys = differing_config(runs)
    columns = [*FIXED_COLUMNS[:4], metric, *FIXED_COLUMNS[4:], *keys]
    table = []
    for run in runs:
        record = run.record or {}
        flat = flatten(record.get("config") or {})
        throughput, memory = record.get("throughput") or {}, record.get("memory") or {}
        table.append(
            [
                run.name,
                run.status,
                (record.get("method") or {}).get("name", ""),
                fmt((record.get("parameters") or {}).get("trainable_percent"), 2),
                fmt(run.metric(metric)),
                fmt(throughput.get("tokens_per_s"), 0),
                fmt(memory.get("peak_rss_mb"), 0),
                fmt(checkpoint_mb((record.get("checkpoints") or {}).get("last")), 2),
                *(str(flat.get(key, "")) for key in keys),
            ]
        )
    return columns, table


def checkpoint_mb(path: str | None) -> float | None:
    """Size of a checkpoint file, or of a sharded checkpoint's folder."""
    if not path or not Path(path).exists():
        return None
    files = [Path(path)] if Path(path).is_file() else [p for p in Path(path).rglob("*") if p.is_file()]
    return sum(file.stat().st_size for file in files) / 2**20


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def sort_runs(runs: list[Run], metric: str) -> list[Run]:
    sign = 1 if lower_is_better(metric) else -1
    return sorted(runs, key=lambda run: (run.metric(metric) is None, sign * (run.metric(metric) or 0.0)))


# ------------------------------------------------------------------------------------------------ plots, report


def pyplot():
    """matplotlib's pyplot drawing to files only (no display on a cluster), imported when a report is asked for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: list[Run], path: Path) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, name in zip(axes, ("train_loss", "val_loss"), strict=True):
        for run in runs:
            if run.curves.get(name):
                steps, values = zip(*run.curves[name], strict=True)
                axis.plot(steps, values, marker="." if len(steps) < 30 else None, label=run.name)
        axis.set(title=name, xlabel="step", ylabel="loss")
        if axis.lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_metric_bars(runs: list[Run], metric: str, path: Path) -> Path:
    plt = pyplot()
    named = [(run.name, run.metric(metric)) for run in runs if run.metric(metric) is not None]
    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(named) + 2), 4))
    values = [value for _, value in named]
    bars = axis.bar([name for name, _ in named], values, color="tab:blue")
    axis.bar_label(bars, labels=[f"{value:.4g}" for value in values], padding=2)
    if values:
        axis.set_ylim(*fitted_limits(values))
    axis.set(title=f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)", ylabel=metric)
    axis.tick_params(axis="x", rotation=30)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def fitted_limits(values: list[float]) -> tuple[float, float]:
    """A y range around the values (not from 0: runs differing in the third digit must look different), with room
    above for the value labels."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.25 or abs(high) * 0.05 or 1.0
    return low - pad, high + pad


def write_report(path: Path, columns: list[str], table: list[list[str]], images: list[Path], metric: str) -> None:
    title = f"lightning-ft compare: {len(table)} runs by {metric}"
    relative = [image.name if image.parent == path.parent else str(image) for image in images]
    if path.suffix == ".md":
        lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table]
        lines += ["", *(f"![{Path(image).stem}]({image})" for image in relative)]
        path.write_text("\n".join(lines) + "\n")
        return
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table)
    images_html = "".join(f'<p><img src="{html.escape(image)}" alt="{Path(image).stem}"></p>' for image in relative)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        f"padding:4px 8px;text-align:right}}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<table><tr>{head}</tr>{body}</table>{images_html}</body></html>\n"
    )


def short_key(key: str) -> str:
    """A config key as a column head: without jsonargparse's `init_args.` levels (model.method.r)."""
    return key.replace("init_args.", "")


def cut(cell: str, chars: int = CELL_CHARS) -> str:
    return cell if len(cell) <= chars else cell[: chars - 1] + "…"


def print_table(runs: list[Run], metric: str, columns: list[str], table: list[list[str]]) -> None:
    """The table within the terminal (120 columns when there is none, e.g. a pipe or a SLURM log): short heads,
    config values cut, and as many differing config keys as fit (the others named in a line; the report has all)."""
    width = shutil.get_terminal_size((120, 24)).columns
    fixed = len(FIXED_COLUMNS) + 1
    cells = [[cut(cell) if i >= fixed else cell for i, cell in enumerate(row)] for row in table]
    heads = [cut(short_key(column)) if i >= fixed else column for i, column in enumerate(columns)]
    needed = [max(len(cell) for cell in column) + 3 for column in zip(heads, *cells, strict=True)]
    shown = fixed
    while shown < len(columns) and sum(needed[: shown + 1]) + 1 <= width:
        shown += 1
    console_table = Table(title=f"{len(runs)} runs, best {metric} first")
    for head in heads[:shown]:
        console_table.add_column(head, overflow="fold")
    for row in cells:
        console_table.add_row(*row[:shown])
    console = Console(width=width)
    console.print(console_table)
    if shown < len(columns):
        console.print(f"also differing: {', '.join(short_key(key) for key in columns[shown:])}", soft_wrap=False)


def load_wandb_project(path: str) -> list[Run]:
    """The runs of a W&B project (ENTITY/PROJECT) through the W&B API: needs network access and a key."""
    import wandb

    try:
        api_runs = list(wandb.Api(timeout=30).runs(path))
    except Exception as err:  # noqa: BLE001 - network, authentication or a wrong path: one line either way
        raise UserError(f"--wandb {path}: {first_line(err)}") from None
    runs = []
    for api_run in api_runs:
        summary = {k: v for k, v in api_run.summary.items() if isinstance(v, int | float)}
        record = {"status": api_run.state, "config": dict(api_run.config), "metrics": {"best": {}, "final": summary}}
        history = api_run.history(keys=["trainer/global_step", "train_loss", "val_loss"], pandas=False)
        curves = {
            name: [
                (int(row["trainer/global_step"]) + LOGGED_STEP_OFFSET, float(row[name]))
                for row in history
                if row.get(name) is not None
            ]
            for name in ("train_loss", "val_loss")
        }
        runs.append(Run(name=api_run.name, path=Path(api_run.id), record=record, curves=curves))
    return runs


def compare(paths: list[str], metric: str = "val_loss", output: str | None = None, wandb: str | None = None) -> None:
    """Print the runs side by side (best `metric` first); with `output`, also a report with loss curves and bars.

    `paths`: run dirs or globs; `wandb`: also the runs of this W&B project (ENTITY/PROJECT; needs the network).
    """
    output = Path(output) if output else None
    if output and output.suffix not in (".html", ".md"):
        raise UserError(f"--output {output}: a .html or .md file")
    if not paths and not wandb:
        raise UserError("compare: give run dirs (or globs), or --wandb ENTITY/PROJECT")
    loaded = [load_run(path) for path in find_runs(paths)] if paths else []
    runs = sort_runs(loaded + (load_wandb_project(wandb) if wandb else []), metric)
    columns, table = rows(runs, metric)
    if all(run.metric(metric) is None for run in runs):
        print(f"no run has the metric {metric!r}", file=sys.stderr)
    print_table(runs, metric, columns, table)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        images = [
            plot_curves(runs, output.with_name(output.stem + "_loss.png")),
            plot_metric_bars(runs, metric, output.with_name(output.stem + "_metric.png")),
        ]
        write_report(output, columns, table, images, metric)
        print(f"report: {output} ({', '.join(image.name for image in images)})")
