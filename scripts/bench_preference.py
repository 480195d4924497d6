"""DPO throughput, side by side: lightning_ft against TRL's DPOTrainer on the same model, pairs, beta and LoRA.

    python scripts/bench_preference.py [--pairs 256] [--repeats 2] [--json results.json]

Builds the workload once: the first --pairs conversational pairs of hh-rlhf (../shared/datasets, read in place)
whose longer sequence fits --max_length (so no contender truncates), a byte-level BPE tokenizer trained on them
with a plain chat template, and a randomly initialised Llama. Every contender then trains --epochs passes over the
pairs in a process of its own (the order rotating from repeat to repeat), LoRA on q/v, fp32, beta 0.1, constant
lr, gradient clipping 1.0, and is measured from outside:

- real tokens/s: the tokens of every pair's two sequences (prompt + chosen, prompt + rejected), which each tool
  tokenizes to the same ids (tests/test_preference.py), times the passes, over the wall time of its train call (a
  precomputed reference's pass included);
- peak RSS of the process;
- final loss: the DPO loss of the trained adapter against the adapter-off base over all the pairs, computed here
  the same way for every contender (fp32, eval mode).

Contenders: TRL with its reference pass each step, TRL with precompute_ref_log_probs; lightning_ft unpacked (TRL's
layout), packed, and packed with `reference: precomputed`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_throughput import rotating_runs
from tiny_model import build_tiny_llama

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/datasets/hh_rlhf_harmless_base_test/test.preference.jsonl"
CONTENDERS = {
    "trl": "TRL DPOTrainer",
    "trl_precomputed": "TRL DPOTrainer, precompute_ref_log_probs",
    "lightning_ft_unpacked": "lightning_ft DPO, unpacked",
    "lightning_ft": "lightning_ft DPO, packed",
    "lightning_ft_precomputed": "lightning_ft DPO, packed, reference: precomputed",
}


def prepare(args: argparse.Namespace, workdir: Path) -> dict:
    """The pairs, the model and the workload settings, in workdir."""
    from lightning_ft.data import FineTuneDataModule
    from lightning_ft.data.formats.chat import BUILTIN_TEMPLATE

    records = [json.loads(line) for line in args.data.open()][: args.pairs * 2]
    for record in records:  # responses as assistant turns: TRL takes no text response after a conversational prompt
        for key in ("chosen", "rejected"):
            if isinstance(record[key], str):
                record[key] = [{"role": "assistant", "content": record[key]}]
    texts = [turn["content"] for r in records for key in ("prompt", "chosen", "rejected") for turn in r[key]]
    model_dir = build_tiny_llama(
        workdir / "model", texts, hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.heads,
        vocab_size=args.vocab,
    )  # fmt: skip
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": BUILTIN_TEMPLATE}))
    all_path = workdir / "all.jsonl"
    all_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = FineTuneDataModule(
        "preference", str(all_path), tokenizer=str(model_dir), max_length=100_000, cache_dir=str(workdir / "cache")
    )
    data.setup("fit")
    kept = []
    for example in data.datasets["train"]:
        sequence = example["sequence"]
        if max(sequence.count(0), sequence.count(1)) <= args.max_length:
            kept.append(records[example["line"] - 1])
    pairs_path = workdir / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in kept[: args.pairs]))
    workload = {
        "workdir": str(workdir), "model_dir": str(model_dir), "pairs_path": str(pairs_path),
        "pairs": len(kept[: args.pairs]), "batch_size": args.batch_size, "max_length": args.max_length,
        "lr": args.lr, "epochs": args.epochs, "beta": 0.1,
        "lora_r": 8, "lora_alpha": 16, "lora_targets": ["q_proj", "v_proj"],
    }  # fmt: skip
    (workdir / "workload.json").write_text(json.dumps(workload, indent=1))
    return workload


def pair_batches(workload: dict) -> list[dict]:
    """Every pair, tokenized by lightning_ft's pipeline, in unpacked batches: what the final loss is taken on."""
    from lightning_ft.data import FineTuneDataModule

    data = FineTuneDataModule(
        "preference", workload["pairs_path"], tokenizer=workload["model_dir"], max_length=workload["max_length"],
        cache_dir=str(Path(workload["workdir"]) / "cache"), batching="pad", eval_batch_size=16,
    )  # fmt: skip
    data.setup("fit")
    data.datasets["val"] = data.datasets["train"]
    return list(data.eval_loader("val"))


@torch.no_grad()
def final_loss(model, batches: list[dict], beta: float) -> float:
    """The mean DPO (sigmoid) loss of the policy (the adapter on) against the reference (the adapter off)."""
    import torch.nn.functional as F

    from lightning_ft.forward import Forward
    from lightning_ft.objectives.pairs import pair_logps

    model.eval()
    policy = Forward(model, "causal_lm")
    total = count = 0
    for batch in batches:
        mine = pair_logps(policy.label_logps(batch), batch)
        with model.disable_adapter():
            ref = pair_logps(policy.label_logps(batch), batch)
        delta = beta * ((mine.chosen - ref.chosen) - (mine.rejected - ref.rejected))
        total += float(-F.logsigmoid(delta).sum())
        count += len(delta)
    return total / count


def real_tokens(workload: dict) -> int:
    """The tokens of every pair's two sequences, as lightning_ft's pipeline tokenizes them."""
    batches = pair_batches(workload)
    return workload["epochs"] * sum(int(b["attention_mask"].sum()) for b in batches)


def run_trl(workload: dict, precompute: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in Path(workload["pairs_path"]).read_text().splitlines()]
    args = DPOConfig(
        output_dir=str(Path(workload["workdir"]) / "trl"), report_to=[], use_cpu=True, bf16=False,
        per_device_train_batch_size=workload["batch_size"], num_train_epochs=workload["epochs"],
        learning_rate=workload["lr"],
        lr_scheduler_type="constant", beta=workload["beta"], max_length=None, save_strategy="no",
        logging_steps=10_000, dataloader_num_workers=0, precompute_ref_log_probs=precompute, seed=0,
    )  # fmt: skip
    lora = LoraConfig(
        r=workload["lora_r"], lora_alpha=workload["lora_alpha"], target_modules=workload["lora_targets"],
        lora_dropout=0.0, task_type="CAUSAL_LM",
    )  # fmt: skip
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(workload["model_dir"]), args=args, peft_config=lora,
        train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(workload["model_dir"]),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = sum(
        2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset
    )
    return {"seconds": seconds, "tokens_counted_by_tool": tokens, "model": trainer.model}


def run_lightning_ft(workload: dict, batching: str, reference: str) -> dict:
    from lightning.pytorch import Trainer, seed_everything

    from lightning_ft import FineTuneDataModule, FineTuneModule, LoRA
    from lightning_ft.objectives import DPO
    from lightning_ft.optim import Optim

    seed_everything(0)
    lora = LoRA(
        r=workload["lora_r"], alpha=workload["lora_alpha"], dropout=0.0, target_modules=workload["lora_targets"]
    )
    module = FineTuneModule(
        workload["model_dir"], method=lora, objective=DPO(beta=workload["beta"], reference=reference),
        optim=Optim(lr=workload["lr"], weight_decay=0.0, scheduler="constant"),
    )  # fmt: skip
    cache = Path(workload["workdir"]) / f"cache-{batching}-{reference}-{os.getpid()}"  # no contender reuses a table
    data = FineTuneDataModule(
        "preference", workload["pairs_path"], tokenizer=workload["model_dir"], max_length=workload["max_length"],
        batch_size=workload["batch_size"], batching=batching, cache_dir=str(cache), num_workers=0,
    )  # fmt: skip
    data.setup("fit")  # tokenized before the clock starts, as TRL tokenizes in its constructor
    trainer = Trainer(
        max_epochs=workload["epochs"], accelerator="cpu", precision="32-true", gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_counted_by_tool": sum(data.datasets["train"]["length"]), "model": module.model}


def run(name: str, workdir: Path) -> dict:
    workload = json.loads((workdir / "workload.json").read_text())
    if name.startswith("trl"):
        result = run_trl(workload, precompute=name == "trl_precomputed")
    else:
        batching = "pad" if name == "lightning_ft_unpacked" else "pack"
        result = run_lightning_ft(workload, batching, "precomputed" if name.endswith("precomputed") else "live")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = result.pop("model")
    tokens = real_tokens(workload)
    return {
        "contender": name, **result, "tokens": tokens, "tokens_per_s": tokens / result["seconds"],
        "peak_rss_mb": peak, "final_loss": final_loss(model, pair_batches(workload), workload["beta"]),
    }  # fmt: skip


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for name, label in CONTENDERS.items():
        runs = [r for r in results if r["contender"] == name]
        if runs:
            rows.append({
                "contender": name, "label": label,
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                "tokens_per_s_runs": [round(r["tokens_per_s"], 1) for r in runs],
                "tokens": runs[0]["tokens"], "tokens_counted_by_tool": runs[0]["tokens_counted_by_tool"],
                "final_loss": statistics.median(r["final_loss"] for r in runs),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            })  # fmt: skip
    return rows


def verdict(rows: list[dict]) -> dict:
    """The issue's acceptance: lightning_ft's best against TRL's best, at equal final loss and no more memory."""
    row = {r["contender"]: r for r in rows}
    ours = [r for name, r in row.items() if name.startswith("lightning_ft")]
    trl = [r for name, r in row.items() if name.startswith("trl")]
    if not (ours and trl):
        return {}
    best, theirs = max(ours, key=lambda r: r["tokens_per_s"]), max(trl, key=lambda r: r["tokens_per_s"])
    pair = f"{best['contender']} / {theirs['contender']}"
    return {
        f"tokens/s, {pair}, >= 1.5": round(best["tokens_per_s"] / theirs["tokens_per_s"], 3),
        f"final loss, {pair} - 1, within 2%": round(best["final_loss"] / theirs["final_loss"] - 1, 4),
        f"peak RSS, {pair}, <= 1.0": round(best["peak_rss_mb"] / theirs["peak_rss_mb"], 3),
    }


def print_table(rows: list[dict], checks: dict, workload: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"DPO, LoRA q/v r{workload['lora_r']}, {workload['pairs']} pairs x {workload['epochs']} epochs, "
    title += f"batch {workload['batch_size']} pairs"
    table = Table(title=title)
    for column in ("contender", "real tokens/s", "final loss", "peak RSS MB"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for r in rows:
        table.add_row(r["label"], f"{r['tokens_per_s']:,.0f}", f"{r['final_loss']:.4f}", f"{r['peak_rss_mb']:,.0f}")
    console = Console(width=150)
    console.print(table)
    for name, value in checks.items():
        console.print(f"  {name}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="conversational preference pairs (jsonl)")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max_length", type=int, default=512, help="pairs with a longer sequence are left out")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=8, help="pairs per step")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--epochs", type=int, default=1, help="passes over the pairs (a precomputed reference pays once)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
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
        rows = summarise(rotating_runs(args.contenders, args.repeats, workdir, __file__))
        checks = verdict(rows)
        print_table(rows, checks, workload)
        if args.json:
            settings = vars(args) | {"data": str(args.data), "workdir": None, "json": str(args.json)}
            args.json.write_text(json.dumps({"settings": settings, "rows": rows, "checks": checks}, indent=1))


if __name__ == "__main__":
    main()
