"""Training throughput, side by side: HF Trainer, TRL and lightning_ft on the same model, data and examples.

    python scripts/bench_throughput.py [--records 200] [--repeats 3] [--json results.json]
    python scripts/bench_throughput.py --hidden 1024 --layers 16 --method full --steps 20

Builds the workload once: the first --records records of an Alpaca-format file (default: alpaca_gpt4_en_demo in
../shared/datasets, read in place), a byte-level BPE tokenizer trained on them, a randomly initialised Llama from
a config (no hub here), and the examples tokenized by lightning_ft's pipeline. Then every contender (see
throughput_contenders.py) trains in a process of its own, the order rotating from repeat to repeat, and the table
gives medians: real (non-padding) tokens/s, the fraction of the ceiling (the model's own forward+backward+step on
full rows, measured in the same run), MFU where the device's peak is known, final loss, peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from throughput_contenders import ABLATIONS, CONTENDERS, Workload, run
from tiny_model import build_instruction_llama

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/datasets/alpaca_gpt4_en_demo/alpaca_en_demo.json"


def prepare(args: argparse.Namespace, workdir: Path) -> Workload:
    """Records, tokenizer + model, and the tokenized examples, all in workdir."""
    from lightning_ft.data import FineTuneDataModule
    from lightning_ft.data.sources import read_records

    records = [record for _, record in read_records(str(args.data), "--data")][: args.records]
    train_path = workdir / "train.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    sizes = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "vocab_size": args.vocab}
    model_dir = build_instruction_llama(workdir / "model", records, **sizes)
    data = FineTuneDataModule(
        "instruction", str(train_path), tokenizer=str(model_dir), max_length=args.max_length,
        cache_dir=str(workdir / "cache"),
    )  # fmt: skip
    data.setup("fit")
    tokenized = data.datasets["train"].select_columns(["input_ids", "labels"])
    tokenized_path = workdir / "tokenized.jsonl"
    tokenized_path.write_text("".join(json.dumps(row) + "\n" for row in tokenized))
    workload = Workload(
        workdir=str(workdir),
        model_dir=str(model_dir),
        train_path=str(train_path),
        tokenized_path=str(tokenized_path),
        pad_token_id=data.get_tokenizer().pad_token_id,
        method=args.method,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        max_steps=args.steps,
    )
    workload.save()
    return workload


def run_in_process(name: str, workdir: Path, script: str = __file__) -> dict:
    """One contender in a fresh Python process (its own imports, allocator and peak RSS): `script --run NAME`."""
    out = workdir / f"result-{name}.json"
    command = [sys.executable, script, "--run", name, "--workdir", str(workdir), "--json", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def rotating_runs(contenders: list[str], repeats: int, workdir: Path, script: str = __file__) -> list[dict]:
    """Every contender `repeats` times, each in a process of its own, interleaved with the order rotating from
    repeat to repeat (a machine that slows down or warms up weighs on all alike)."""
    results = []
    for repeat in range(repeats):
        shift = repeat % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            result = run_in_process(name, workdir, script)
            print(f"repeat {repeat + 1}: {name}: {result['tokens_per_s']:,.0f} real tokens/s", flush=True)
            results.append({**result, "repeat": repeat})
    return results


def peak_flops() -> float | None:
    """The device's peak bf16 FLOP/s when Lightning knows it (GPUs); CPUs have no such table."""
    import torch

    if not torch.cuda.is_available():
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(torch.device("cuda"), torch.bfloat16)


def summarise(results: list[dict], workload: Workload) -> list[dict]:
    """Per contender: medians over repeats, share of the ceiling's median tokens/s, MFU."""
    by_name: dict[str, list[dict]] = {}
    for result in results:
        by_name.setdefault(result["contender"], []).append(result)
    ceiling = statistics.median(r["tokens_per_s"] for r in by_name["ceiling"]) if "ceiling" in by_name else None
    peak = peak_flops()
    rows = []
    for name, runs in by_name.items():
        tokens_per_s = statistics.median(r["tokens_per_s"] for r in runs)
        gpu = [r["peak_gpu_mb"] for r in runs if r["peak_gpu_mb"] is not None]
        rows.append({
            "contender": name,
            "label": CONTENDERS[name][0],
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_runs": [round(r["tokens_per_s"], 1) for r in runs],
            "tokens": runs[0]["tokens"],
            "forwards": runs[0]["forwards"],
            "seconds": statistics.median(r["seconds"] for r in runs),
            "of_ceiling": tokens_per_s / ceiling if ceiling else None,
            "mfu": tokens_per_s * runs[0]["flops_per_token"] / peak if peak else None,
            "final_loss": statistics.median(r["final_loss"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "peak_gpu_mb": statistics.median(gpu) if gpu else None,
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["tokens_per_s"])


def verdict(rows: list[dict]) -> dict:
    """The issue's acceptance ratios: lightning_ft against each peer, the ceiling and (b)'s loss; TRL's RSS."""
    row = {r["contender"]: r for r in rows}
    ours = row.get("lightning_ft")
    if ours is None:
        return {}
    trl = [r for name, r in row.items() if name.startswith("trl_")]
    trl_fastest = max(trl, key=lambda r: r["tokens_per_s"]) if trl else None
    checks = {}
    if trl_fastest:
        checks[f"x TRL fastest ({trl_fastest['contender']}), >= 1.5"] = (
            ours["tokens_per_s"] / trl_fastest["tokens_per_s"]
        )
        checks["peak RSS / TRL fastest's, <= 1.0"] = ours["peak_rss_mb"] / trl_fastest["peak_rss_mb"]
    if "hf_best" in row:
        checks["x HF best practice (b), >= 1.25"] = ours["tokens_per_s"] / row["hf_best"]["tokens_per_s"]
        checks["final loss vs (b), within 2%"] = ours["final_loss"] / row["hf_best"]["final_loss"] - 1
    if "hf_recipe" in row:
        checks["x HF common recipe (a), >= 2"] = ours["tokens_per_s"] / row["hf_recipe"]["tokens_per_s"]
    if ours["of_ceiling"] is not None:
        checks["of the ceiling, >= 0.85"] = ours["of_ceiling"]
    return {name: round(value, 3) for name, value in checks.items()}


def print_table(rows: list[dict], checks: dict, workload: Workload) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"training throughput, {workload.method}, batch {workload.batch_size} x {workload.max_length}")
    for column in ("contender", "real tokens/s", "of ceiling", "MFU", "final loss", "peak RSS MB", "peak GPU MB"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for r in rows:
        table.add_row(
            r["label"],
            f"{r['tokens_per_s']:,.0f}",
            f"{r['of_ceiling']:.0%}" if r["of_ceiling"] else "-",
            f"{r['mfu']:.1%}" if r["mfu"] else "-",
            f"{r['final_loss']:.4f}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['peak_gpu_mb']:,.0f}" if r["peak_gpu_mb"] else "-",
        )
    console = Console(width=150)  # the whole table, also when the output goes to a file
    console.print(table)
    for name, value in checks.items():
        console.print(f"  {name}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Alpaca-format records (json, jsonl, ...)")
    parser.add_argument("--records", type=int, default=200, help="the first N records are the examples")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary trained on the records")
    parser.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--steps", type=int, default=None, help="stop every contender after N optimizer steps")
    parser.add_argument("--repeats", type=int, default=3)
    # (compiling outlasts a short run; the ablations explain lightning_ft's figure, they do not compete)
    default = [name for name in CONTENDERS if name != "lightning_ft_compiled" and name not in ABLATIONS]
    parser.add_argument("--contenders", nargs="+", default=default, choices=list(CONTENDERS))
    parser.add_argument("--workdir", type=Path, help="default: a temp dir")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--run", choices=list(CONTENDERS), help=argparse.SUPPRESS)  # one contender, in this process
    return parser


def main() -> None:
    args = build_parser().parse_args()

    if args.run:
        args.json.write_text(json.dumps(run(args.run, args.workdir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        workload = prepare(args, workdir)
        results = rotating_runs(args.contenders, args.repeats, workdir)
        rows = summarise(results, workload)
        checks = verdict(rows)
        print_table(rows, checks, workload)
        if args.json:
            summary = {"workload": vars(args) | {"data": str(args.data), "workdir": None, "json": str(args.json)}}
            args.json.write_text(json.dumps({**summary, "rows": rows, "checks": checks, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
