"""What fault tolerance costs: checkpoint writing, and the non-finite check before each optimizer step.

1. Lightning's TorchCheckpointIO against lightning_ft's SafeCheckpointIO. Lightning pickles the whole checkpoint
   into memory (BytesIO) and copies it to disk through an fsspec transaction, without fsync; SafeCheckpointIO
   streams torch.save into a temp file, fsyncs it and renames it. Each size is saved with both, alternating; the
   median time and the extra Python heap the save needed (tracemalloc: the BytesIO copy shows there; tensor
   storage does not).
2. StepGuard's check (one norm per gradient, one device sync) against the AdamW step it guards, for the same
   parameters: the overhead on the optimizer step alone, a lower bound of a whole training step.

    .venv/bin/python scripts/bench_fault_tolerance.py --sizes 64 512 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from lightning_ft.checkpoints import SafeCheckpointIO


def checkpoint_of(megabytes: int) -> dict:
    tensors = {f"layer{i}.weight": torch.randn(256, 1024) for i in range(megabytes)}  # 1 MiB each (fp32)
    return {"state_dict": tensors, "global_step": 1}


def measure(io, checkpoint: dict, path: Path) -> tuple[float, float]:
    tracemalloc.start()
    start = time.perf_counter()
    io.save_checkpoint(checkpoint, path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def guard_overhead(megabytes: int, repeats: int) -> tuple[float, float]:
    """Median seconds of (the guard's check, an AdamW step) over `megabytes` MiB of fp32 parameters."""
    params = [torch.nn.Parameter(torch.randn(256, 1024)) for _ in range(megabytes)]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    optimizer.step()  # allocate the moments first, as after the first step of a run
    checks, steps = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        bool(torch.stack(torch._foreach_norm([p.grad for p in params])).isfinite().all())
        checks.append(time.perf_counter() - start)
        start = time.perf_counter()
        optimizer.step()
        steps.append(time.perf_counter() - start)
    return statistics.median(checks), statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512], help="checkpoint sizes in MiB")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    writers = {"lightning": TorchCheckpointIO(), "lightning_ft": SafeCheckpointIO()}
    print("| size MiB | writer | median s | extra heap MiB | time ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            checkpoint = checkpoint_of(size)
            results = {name: [] for name in writers}
            for _ in range(args.repeats):
                for name, io in writers.items():  # alternating: drift on a shared machine hits both alike
                    results[name].append(measure(io, checkpoint, Path(folder) / f"{name}.ckpt"))
            base = statistics.median(s for s, _ in results["lightning"])
            for name, runs in results.items():
                seconds = statistics.median(s for s, _ in runs)
                heap = max(m for _, m in runs)
                print(f"| {size} | {name} | {seconds:.3f} | {heap:.0f} | {seconds / base:.2f} |")
    print("\n| parameters MiB | guard check s | AdamW step s | check / step |")
    print("|---|---|---|---|")
    for size in args.sizes:
        check, step = guard_overhead(size, args.repeats)
        print(f"| {size} | {check:.4f} | {step:.4f} | {check / step:.3f} |")


if __name__ == "__main__":
    main()
