"""Data-pipeline benchmark: throughput, padding waste per batching mode, and training speed per mode.

    python scripts/bench_data.py [--shared ../shared/datasets] [--steps 20]

Reads the real sets in ../shared/datasets (never copied). No hub is reachable, so the tokenizer is a byte-level
BPE (32k tokens) trained on the two alpaca-style sets, saved with a small Llama (hidden 256, 4 layers) for the
training-speed comparison. Results go to BENCHMARKS.md by hand, with this command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

from lightning.pytorch import Trainer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_llama

from lightning_ft import FineTuneModule, LoRA
from lightning_ft.data import FineTuneDataModule
from lightning_ft.data.sources import read_records

console = Console()


def pipeline_throughput(source: Path, tokenizer: str, cache: str) -> tuple[int, float]:
    """Examples per second from file to tokenized dataset (read, quality rules, tokenize, cache write)."""
    datamodule = FineTuneDataModule("instruction", str(source), tokenizer=tokenizer, max_length=512, cache_dir=cache)
    start = time.perf_counter()
    datamodule.setup("fit")
    return datamodule.report["train"]["records"], time.perf_counter() - start


def training_speed(model_dir: str, source: Path, batching: str, steps: int, cache: str) -> float:
    """Real (label-bearing) tokens per second of LoRA training under one batching mode."""
    datamodule = FineTuneDataModule(
        "instruction",
        str(source),
        tokenizer=model_dir,
        max_length=512,
        batch_size=8,
        batching=batching,
        cache_dir=cache,
    )
    module = FineTuneModule(model_dir, method=LoRA())
    tokens = []
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    for batch, _ in zip(loader, range(steps)):
        tokens.append(int((batch["input_ids"] != datamodule.get_tokenizer().pad_token_id).sum()))
    datamodule.train_sampler.passes = 0  # train on the very batches just counted
    start = time.perf_counter()
    trainer.fit(module, datamodule)
    return sum(tokens) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    alpaca = args.shared / "alpaca_gpt4_en_demo" / "alpaca_en_demo.json"
    code = args.shared / "code_alpaca_2k" / "code_alpaca_2k.json"
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    texts = [json.dumps(r) for path in (alpaca, code) for _, r in read_records(str(path), "--data.train_path")]
    model_dir = str(
        build_tiny_llama(work / "model", texts, hidden=256, layers=4, heads=8, kv_heads=4, vocab_size=32000)
    )

    records, seconds = pipeline_throughput(code, model_dir, str(work / "cache-throughput"))
    console.print(
        f"pipeline on code_alpaca_2k: {records} records in {seconds:.2f} s = {records / seconds:,.0f} "
        "examples/s (read + quality rules + tokenize + cache write, 1 process)"
    )

    report = FineTuneDataModule(
        "instruction",
        str(alpaca),
        tokenizer=model_dir,
        max_length=512,
        batch_size=8,
        cache_dir=str(work / "cache-waste"),
    )
    report.setup("fit")
    waste = report.report["train"]["padding_waste"]
    table = Table(title="alpaca_gpt4_en_demo, max_length 512, batch 8: pad tokens / all tokens")
    for key in waste:
        table.add_column(key, justify="right")
    table.add_row(*(f"{value:.1%}" for value in waste.values()))
    console.print(table)
    console.print(f"lengths: {report.report['train']['lengths']}")

    speed = Table(title=f"LoRA training speed on CPU, {args.steps} steps per batching mode")
    speed.add_column("batching")
    speed.add_column("real tokens/s", justify="right")
    speed.add_column("vs pad", justify="right")
    results = {
        mode: training_speed(model_dir, alpaca, mode, args.steps, str(work / "cache-speed"))
        for mode in ("pad", "group_by_length", "pack")
    }
    for mode, value in results.items():
        speed.add_row(mode, f"{value:,.0f}", f"{value / results['pad']:.2f}x")
    console.print(speed)


if __name__ == "__main__":
    main()
