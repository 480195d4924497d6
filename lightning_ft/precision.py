"""The training precision each device runs fastest at, correctly (what `--trainer.precision` defaults to), and the
compiler torch.compile needs on a CPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): elsewhere torch emulates it, slower than fp32.
    Read from /proc/cpuinfo, as torch offers no public query; on other systems, assumed not."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fastest_precision(accelerator: str | None) -> str:
    """bf16 autocast where the device has bf16 math (Ampere+ GPUs, CPUs with AVX512-BF16/AMX: 1.4x fp32 end to end
    on this project's CPUs, BENCHMARKS.md), fp16 autocast on older GPUs, fp32 otherwise. Weights stay fp32 under
    autocast (see FineTuneModule's dtype for frozen ones)."""
    accelerator = str(accelerator or "auto").lower()
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu"):
        return "bf16-mixed" if cpu_has_bf16() else "32-true"
    return "32-true"


def c_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would use ($CXX, else g++ / clang++ / c++ on the PATH)."""
    candidates = (os.environ.get("CXX"), "g++", "clang++", "c++")
    return next((path for name in candidates if name and (path := shutil.which(name))), None)
