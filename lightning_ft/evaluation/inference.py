"""`lightning-ft bench-inference`: generation latency and tokens/s of a causal LM, with and without the KV cache.

For every batch size and both cache settings, `--warmup` untimed then `--requests` timed batches of greedy
`generate`, each producing exactly `--new_tokens` tokens per row (min = max new tokens, so EOS cannot end a row
early). A request's latency is the wall time of the whole batch it was in (every row of a batch arrives at once).
Reported: p50/p95/p99/mean latency, time to first token, generated tokens/s, and per batch size the KV cache's
speed-up (median latency without / with it). `--quantize int8` runs the Linear layers in dynamic int8 on the CPU.
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import transformers
from rich.console import Console
from rich.table import Table
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from lightning_ft.constants import DType
from lightning_ft.errors import UserError
from lightning_ft.files import output_file
from lightning_ft.loading import TORCH_DTYPES
from lightning_ft.prompts import left_padded
from lightning_ft.trained import load_causal_lm

PERCENTILES = (50, 95, 99)
SEED = 0


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50/p95/p99 (numpy's default 'linear' method: the value at rank q/100 * (n - 1) of the sorted list,
    interpolated between its two neighbours), mean, min and max of a list of latencies."""
    values = np.asarray(latencies, dtype=float)
    summary = {f"p{q}": float(np.percentile(values, q, method="linear")) for q in PERCENTILES}
    return summary | {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch_sizes: expected comma-separated positive integers such as 1,4,16, got {text!r}")
    return list(dict.fromkeys(sizes))


# ------------------------------------------------------------------------------------------------ prompts


def random_prompts(tokenizer, rows: int, length: int, seed: int = SEED) -> list[torch.Tensor]:
    """`rows` prompts of `length` token ids drawn uniformly (seeded) from the vocabulary, special tokens excluded:
    the same for every run, and no text to pick."""
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    return list(allowed[torch.randint(len(allowed), (rows, length), generator=generator)])


def file_prompts(tokenizer, path: Path, rows: int, max_tokens: int | None) -> list[torch.Tensor]:
    """One prompt per non-empty line of `path`, cycled to `rows` prompts; cut to their last `max_tokens` tokens."""
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--prompts: cannot read {path}: {err}") from None
    if not texts:
        raise UserError(f"--prompts: {path} has no non-empty line")
    ids = [torch.tensor(tokenizer(text)["input_ids"]) for text in texts]
    ids = [row[-max_tokens:] if max_tokens else row for row in ids]
    return [ids[i % len(ids)] for i in range(rows)]


# ---------------------------------------------------------------------------------------------- measuring


class FirstTokenClock(BaseStreamer):
    """Notes when `generate` hands over the first new token: its first `put` is the prompt, the second the first
    generated token, already copied to the CPU (so the device has finished computing it)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def quantize_int8(model) -> int:
    """Dynamic int8 of every nn.Linear: weights stored in int8, activations quantized per batch at run time, int8
    matmuls on the CPU (fbgemm/oneDNN). Returns how many layers were swapped.

    torch.ao's quantize_dynamic, although deprecated, rather than torchao: it still works in torch 2.13, needs no
    extra package, and is faster here. 64 tokens from the 24M Llama of BENCHMARKS.md, one thread, batch 1 / 16:
    0.52 / 1.13 s, against 1.34 / 1.91 s with torchao 0.18's Int8DynamicActivationInt8WeightConfig and
    1.31 / 2.10 s with its Int8WeightOnlyConfig (eager; torchao's int8 kernels target GPUs and torch.compile)."""
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with warnings.catch_warnings():  # its deprecation notices, one per layer
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules()), "quantize_dynamic left a Linear layer"
    return linear


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_generate(model, batch: dict, config: GenerationConfig, device: str) -> tuple[float, float, int]:
    """(latency s, time to first token s, new tokens per row) of one `generate` call."""
    clock = FirstTokenClock()
    _synchronize(device)
    start = time.perf_counter()
    output = model.generate(**batch, generation_config=config, streamer=clock)
    _synchronize(device)
    latency = time.perf_counter() - start
    new_tokens = output.shape[1] - batch["input_ids"].shape[1]
    return latency, (clock.first_token_at or time.perf_counter()) - start, new_tokens


def measure(model, prompts, pad_id: int, eos_id, *, batch_size: int, bench, device: str) -> list[dict]:
    """One batch size, KV cache on and off: `bench.warmup` untimed, then `bench.requests` timed batches of each.

    The two settings alternate request by request (and which goes first alternates too), so that a change in the
    machine's load hits both alike and their ratio stays meaningful on a shared machine."""
    configs = {
        cache: GenerationConfig(
            max_new_tokens=bench.new_tokens,
            min_new_tokens=bench.new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=cache,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        for cache in (True, False)
    }
    timings = {cache: {"latency": [], "first_token": [], "new_tokens": []} for cache in configs}
    for request in range(bench.warmup + bench.requests):
        batch = left_padded(prompts[request * batch_size : (request + 1) * batch_size], pad_id, device)
        for cache in (True, False) if request % 2 == 0 else (False, True):
            latency, first_token, produced = timed_generate(model, batch, configs[cache], device)
            if produced != bench.new_tokens:  # would make every figure below wrong
                raise RuntimeError(f"generate produced {produced} new tokens per row, asked for {bench.new_tokens}")
            if request >= bench.warmup:
                for key, value in zip(("latency", "first_token", "new_tokens"), (latency, first_token, produced)):
                    timings[cache][key].append(value)
    results = []
    for cache, timing in timings.items():
        generated = batch_size * sum(timing["new_tokens"])
        results.append({
            "batch_size": batch_size,
            "use_cache": cache,
            "new_tokens_per_row": timing["new_tokens"],
            "generated_tokens": generated,
            "tokens_per_s": generated / sum(timing["latency"]),
            "latency_s": latency_summary(timing["latency"]),
            "first_token_s": latency_summary(timing["first_token"]),
            "latencies_s": timing["latency"],
        })  # fmt: skip
    return results


# ---------------------------------------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class InferenceBench:
    """What `lightning-ft bench-inference` measures (each field is its flag).

    Args:
        model: causal-LM dir (with config.json), or a .ckpt from `lightning-ft fit`.
        batch_sizes: comma-separated batch sizes.
        new_tokens: tokens generated per row, exactly.
        prompt_tokens: random prompts' length (default 32); cuts --prompts lines to their last this many tokens.
        prompts: a text file, one prompt a line (default: random token ids).
        requests: timed batches per batch size and cache setting.
        warmup: untimed batches before those.
        quantize: int8: dynamic int8 Linear layers (CPU).
        device: cpu or cuda (default: cuda when available).
        dtype: the weights' dtype (auto: as stored).
        threads: CPU threads for torch (default: torch's choice).
        output: write the results as JSON here.
    """

    model: str
    batch_sizes: str = "1,4,16"
    new_tokens: int = 64
    prompt_tokens: int | None = None
    prompts: str | None = None
    requests: int = 10
    warmup: int = 2
    quantize: Literal["none", "int8"] = "none"
    device: Literal["cpu", "cuda"] | None = None
    dtype: DType = "auto"
    threads: int | None = None
    output: str | None = None

    def check(self) -> None:
        """Every setting, before a model is loaded."""
        parse_batch_sizes(self.batch_sizes)
        for name, least in (("new_tokens", 1), ("prompt_tokens", 1), ("requests", 1), ("warmup", 0), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise UserError(f"--{name} must be at least {least}, got {value}")
        if self.prompts and not Path(self.prompts).is_file():
            raise UserError(f"--prompts: no such file: {self.prompts}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")
        if self.quantize == "int8" and self.device == "cuda":
            raise UserError("--quantize int8 is CPU dynamic quantization: use it with --device cpu")
        if self.quantize == "int8" and self.dtype in ("bfloat16", "float16"):
            raise UserError(f"--quantize int8 computes in float32 between int8 matmuls: drop --dtype {self.dtype}")
        if self.output:
            output_file(self.output)


def run(bench: InferenceBench) -> dict:
    """Load the model, measure every batch size with the KV cache on and off, and return the report."""
    bench.check()
    batch_sizes = parse_batch_sizes(bench.batch_sizes)
    device = bench.device or ("cuda" if torch.cuda.is_available() and bench.quantize == "none" else "cpu")
    if bench.threads:
        torch.set_num_threads(bench.threads)
    model, tokenizer = load_causal_lm(bench.model, bench.dtype)
    if bench.dtype != "auto":  # a checkpoint's model comes in the dtype it was trained in
        model.to(TORCH_DTYPES[bench.dtype])
    parameters = sum(p.numel() for p in model.parameters())  # before int8 packs the Linear weights away
    dtype = str(model.dtype).removeprefix("torch.")
    quantized = quantize_int8(model.float()) if bench.quantize == "int8" else 0
    model.to(device)
    rows = max(batch_sizes) * (bench.warmup + bench.requests)
    if bench.prompts:
        prompts = file_prompts(tokenizer, Path(bench.prompts), rows, bench.prompt_tokens)
    else:
        prompts = random_prompts(tokenizer, rows, bench.prompt_tokens or 32)
    eos_id = model.generation_config.eos_token_id
    eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
    pad_id = tokenizer.pad_token_id
    results = [
        result
        for size in batch_sizes
        for result in measure(model, prompts, pad_id, eos_id, batch_size=size, bench=bench, device=device)
    ]
    median = {(r["batch_size"], r["use_cache"]): r["latency_s"]["p50"] for r in results}
    return {
        "config": {
            "model": bench.model,
            "parameters": parameters,
            "dtype": "int8 Linear, float32 elsewhere" if quantized else dtype,
            "quantize": bench.quantize,
            "quantized_linear_layers": quantized,
            "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})",
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "batch_sizes": batch_sizes,
            "new_tokens": bench.new_tokens,
            "prompts": bench.prompts or f"random token ids, seed {SEED}",
            "prompt_tokens_mean": float(np.mean([len(p) for p in prompts])),
            "requests": bench.requests,
            "warmup": bench.warmup,
            "latency": "a request's latency is the wall time of the whole batch it was in",
        },
        "results": results,
        "kv_cache_speedup": {str(size): median[size, False] / median[size, True] for size in batch_sizes},
    }


def _milliseconds(seconds: float) -> str:
    return f"{1000 * seconds:,.1f}" if seconds < 0.1 else f"{1000 * seconds:,.0f}"


def print_table(report: dict) -> None:
    config = report["config"]
    title = f"bench-inference: {config['new_tokens']} new tokens, {config['device']}, quantize {config['quantize']}"
    table = Table(title=title, caption="latency of a request = of its whole batch; TTFT: median time to first token")
    columns = ["batch", "KV cache", "p50 ms", "p95 ms", "p99 ms", "mean ms", "TTFT ms", "tokens/s"]
    for column in columns:
        table.add_column(column, justify="right")
    for result in report["results"]:
        latency, first = result["latency_s"], result["first_token_s"]
        row = [str(result["batch_size"]), "on" if result["use_cache"] else "off"]
        row += [_milliseconds(latency[key]) for key in ("p50", "p95", "p99", "mean")]
        row += [_milliseconds(first["p50"]), f"{result['tokens_per_s']:,.1f}"]
        table.add_row(*row)
    console = Console()
    console.print(table)
    speedups = ", ".join(f"batch {size}: {ratio:.2f}x" for size, ratio in report["kv_cache_speedup"].items())
    console.print(f"KV-cache speed-up (p50 latency without / with): {speedups}")
