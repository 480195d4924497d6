"""What the lora recipe's adapter defaults cost and buy: target_modules all-linear vs [q_proj, v_proj], dropout 0.05
vs 0, at equal steps on the same model and data.

    python scripts/bench_lora_targets.py [--records 240] [--val 40] [--repeats 2] [--json lora_targets.json]

Each variant is `lightning-ft fit --config configs/lora.yaml` (in a process of its own, the order rotating from
repeat to repeat) with only the two flags changed; the table gives medians of real tokens/s (the run record's
throughput) and the held-out val_loss after one pass (the same val records for all), with ratios to the recipe's
defaults. The workload is bench_throughput.py's: alpaca_gpt4_en_demo records read in place, a byte-level BPE
tokenizer trained on them, a randomly initialised Llama.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/datasets/alpaca_gpt4_en_demo/alpaca_en_demo.json"
VARIANTS = {  # name: (target_modules, dropout); the first is the recipe's default
    "all-linear, dropout 0.05 (recipe)": ("all-linear", "0.05"),
    "all-linear, dropout 0": ("all-linear", "0.0"),
    "q_proj+v_proj, dropout 0.05": ("[q_proj, v_proj]", "0.05"),
    "q_proj+v_proj, dropout 0": ("[q_proj, v_proj]", "0.0"),
}


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path, Path]:
    from lightning_ft.data.formats import Instruction
    from lightning_ft.data.sources import read_records

    records = [record for _, record in read_records(str(args.data), "--data")][: args.records + args.val]
    train, val = workdir / "train.jsonl", workdir / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records[: args.records]))
    val.write_text("".join(json.dumps(r) + "\n" for r in records[args.records :]))
    texts = [Instruction().template, *(v for r in records for v in r.values() if isinstance(v, str) and v)]
    model = build_tiny_llama(
        workdir / "model", texts, hidden=args.hidden, layers=args.layers, heads=8, kv_heads=8, vocab_size=8192
    )
    return model, train, val


def fit(model: Path, train: Path, val: Path, run_dir: Path, targets: str, dropout: str, max_length: int) -> dict:
    flags = {
        "--model.model_name_or_path": model,
        "--data.train_path": train,
        "--data.val_path": val,
        "--data.max_length": max_length,
        "--data.num_workers": 0,
        "--data.cache_dir": run_dir.parent / "cache",
        "--model.method.init_args.target_modules": targets,
        "--model.method.init_args.dropout": dropout,
        "--trainer.max_epochs": 1,
        "--trainer.default_root_dir": run_dir,
        "--trainer.logger": "false",
        "--trainer.enable_progress_bar": "false",
        "--trainer.enable_model_summary": "false",
        "--generation.num_samples": 0,
    }
    command = [sys.executable, "-m", "lightning_ft", "fit", "--config", str(ROOT / "configs/lora.yaml")]
    command += [str(part) for item in flags.items() for part in item]
    subprocess.run(command, check=True, capture_output=True, text=True)
    record = json.loads((run_dir / "run.json").read_text())
    selection = json.loads((run_dir / "checkpoints/selection.json").read_text())
    return {
        "tokens_per_s": record["throughput"]["tokens_per_s"],
        "seconds": record["throughput"]["seconds"],
        "val_loss": selection["best_model_score"],
        "steps": record["progress"]["global_step"],
        "trainable": record["parameters"]["trainable"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--records", type=int, default=240, help="training records")
    parser.add_argument("--val", type=int, default=40, help="held-out records after them")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        model, train, val = prepare(args, workdir)
        names = list(VARIANTS)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                run_dir = workdir / f"run{repeat}_{names.index(name)}"
                results[name].append(fit(model, train, val, run_dir, *VARIANTS[name], args.max_length))
                print(f"repeat {repeat + 1}: {name}: {results[name][-1]}", flush=True)
    table = {
        name: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for name, runs in results.items()
    }
    base = table[names[0]]
    print("\n| variant | trainable params | real tokens/s | speed vs recipe | held-out val_loss | steps |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        speed = row["tokens_per_s"] / base["tokens_per_s"]
        print(
            f"| {name} | {row['trainable']:,.0f} | {row['tokens_per_s']:,.0f} | {speed:.2f}x | {row['val_loss']:.4f} "
            f"| {row['steps']:.0f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results}, indent=2)
        )


if __name__ == "__main__":
    main()
