"""Every kind of `lightning-ft export` of one LoRA fine-tune, side by side: size, agreement, forward latency.

    python scripts/bench_export.py [--records 200] [--steps 30] [--json results.json]

Builds bench_throughput.py's workload (a Llama from a config with a tokenizer trained on the first --records of
alpaca_gpt4_en_demo), fine-tunes LoRA on it for --steps through `lightning-ft fit`, exports the checkpoint every
way, and reports per export: the time the export took, the weights' size on disk, how its logits compare with the
trained model's (from the export's own check: largest difference relative to the largest logit, top-1 agreement),
and the median forward latency of a (batch, length) batch, loaded the way a user would load it (transformers,
peft, onnxruntime), all in this one process, one after another.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_throughput import DEFAULT_DATA, prepare
from transformers import AutoConfig

from lightning_ft.commands import main as lightning_ft
from lightning_ft.export import load_exported
from lightning_ft.export.check import probe_inputs

EXPORTS = {  # name -> export flags
    "adapter": [],
    "merged fp32": ["--merge", "--dtype", "float32"],
    "merged bf16": ["--merge", "--dtype", "bfloat16"],
    "merged int8 (bnb)": ["--merge", "--quantize", "int8"],
    "merged nf4 (bnb)": ["--merge", "--quantize", "nf4"],
    "onnx fp32": ["--format", "onnx"],
    "onnx int8": ["--format", "onnx", "--quantize", "int8"],
}
WEIGHT_FILES = ("*.safetensors", "*.onnx", "*.onnx.data")


def fine_tune(workload, run_dir: Path, steps: int) -> Path:
    args = ["fit", "--config", "configs/lora.yaml", "--model.model_name_or_path", str(workload.model_dir)]
    args += ["--data.train_path", str(workload.train_path), "--trainer.default_root_dir", str(run_dir)]
    args += ["--trainer.max_steps", str(steps), "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    args += ["--model.optim.lr", "1e-3"]
    assert lightning_ft(args) == 0, "the fine-tune failed"
    return run_dir / "checkpoints" / "last.ckpt"


def forward_latency(run, repeats: int = 10) -> float:
    """Median seconds of `run()` after one untimed call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward(directory: Path, inputs: dict):
    """A zero-argument forward of the export, loaded as its users would load it."""
    if (directory / "model.onnx").is_file():
        import onnxruntime

        session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
        return lambda: session.run(["logits"], feeds)
    model = load_exported(directory)
    return lambda: torch.no_grad()(model)(**inputs, use_cache=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Alpaca-format records (json, jsonl, ...)")
    parser.add_argument("--records", type=int, default=200, help="the first N records are the training examples")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary trained on the records")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="LoRA fine-tuning steps before the exports")
    parser.add_argument("--batch", type=int, default=4, help="rows of the latency batch")
    parser.add_argument("--length", type=int, default=128, help="tokens per row of the latency batch")
    parser.add_argument("--workdir", type=Path, help="default: a temp dir")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workload = prepare(argparse.Namespace(**vars(args), method="lora", batch_size=8, lr=1e-3), workdir)
    checkpoint = fine_tune(workload, workdir / "run", args.steps)
    vocab = AutoConfig.from_pretrained(workload.model_dir).vocab_size
    inputs = probe_inputs(vocab, shape=(args.batch, args.length), seed=1)
    rows = []
    for name, flags in EXPORTS.items():
        out = workdir / name.replace(" ", "_").replace("(", "").replace(")", "")
        start = time.perf_counter()
        assert lightning_ft(["export", "--ckpt", str(checkpoint), "--output", str(out), *flags]) == 0, name
        seconds = time.perf_counter() - start
        check = json.loads((out / "lightning_ft_export.json").read_text())["check"]
        size = sum(path.stat().st_size for pattern in WEIGHT_FILES for path in out.glob(pattern))
        rows.append({
            "export": name,
            "flags": " ".join(flags),
            "export_s": seconds,
            "weights_mb": size / 2**20,
            "relative_diff": check["relative_diff"],
            "top1_agreement": check["top1_agreement"],
            "forward_ms": 1000 * forward_latency(forward(out, inputs)),
        })  # fmt: skip
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))


def print_table(rows: list[dict], args) -> None:
    title = f"lightning-ft export of a LoRA fine-tune (hidden {args.hidden}, {args.layers} layers, vocab {args.vocab})"
    caption = f"forward: median of 10, batch {args.batch} x {args.length} tokens; adapter = base (fp32) + LoRA via peft"
    table = Table(title=title, caption=caption)
    for column in ("export", "export s", "weights MB", "rel. logit diff", "top-1 agree", "forward ms"):
        table.add_column(column, justify="left" if column == "export" else "right")
    for row in rows:
        table.add_row(
            row["export"],
            f"{row['export_s']:.1f}",
            f"{row['weights_mb']:.1f}",
            f"{row['relative_diff']:.1e}",
            f"{row['top1_agreement']:.1%}",
            f"{row['forward_ms']:.1f}",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
