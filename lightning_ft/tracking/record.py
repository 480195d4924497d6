"""The run record `run.json`: what a run was (config, method, code, machine, data) and what it did (status,
progress, throughput, memory, metrics, checkpoints). Written by callbacks/run_record.py, read by compare."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch

RECORD_FILE = "run.json"
SCHEMA = Path(__file__).with_name("run.schema.json")
STATUSES = ("running", "completed", "failed", "preempted")
PACKAGES = ("lightning-ft", "torch", "lightning", "transformers", "peft", "bitsandbytes", "datasets", "deepspeed")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_state(path: Path) -> dict | None:
    """The commit of the code that ran and whether it had uncommitted changes (None outside a git checkout)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return None


def package_versions() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {name: version(name) for name in PACKAGES}


def hardware(accelerator: str, devices: int, num_nodes: int) -> dict:
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "hostname": platform.node(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Key names that hold credentials (not `max_new_tokens` or `pad_token`).
SECRET_KEY = re.compile(r"(api_?key|password|secret|^token|(hf|hub|auth|access|api)_token)$", re.IGNORECASE)


def redact(value):
    """The config with every value whose key names a secret replaced: records get shared, keys must not be."""
    if isinstance(value, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def read_record(run_dir: Path) -> dict | None:
    """The run record of a run dir, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((run_dir / RECORD_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
