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

from lightning_ft.errors import UserError, first_line
from lightning_ft.tracking.process import is_running

RECORD_FILE = "run.json"
SCHEMA = Path(__file__).with_name("run.schema.json")
STATUSES = ("running", "completed", "failed", "preempted", "died")  # died: read, never written (current_status)
HEARTBEAT_S = 30.0  # how often a running fit rewrites its record (progress and heartbeat_at): cheap, tiny file
HEARTBEATS_MISSED = 10  # another host's run is called died after this many heartbeats without one
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
    import torch  # here, not at the top: `lightning-ft compare` reads run records and needs no torch (1 s)

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


class UnreadableRecord(UserError):
    """A run.json that is not JSON (cut short, binary, hand-edited)."""


def read_run_record(run_dir: Path) -> dict | None:
    """The run record of a run dir; None when it has none; UnreadableRecord (naming the file) when it is no JSON."""
    path = run_dir / RECORD_FILE
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # ValueError: malformed JSON or bytes that are no UTF-8
        raise UnreadableRecord(f"{path}: not a readable run record ({first_line(err)})") from None
    if not isinstance(record, dict):
        raise UnreadableRecord(f"{path}: not a readable run record (a JSON {type(record).__name__}, not an object)")
    return record


def current_status(record: dict) -> str:
    """The record's status, except that a `running` run whose process is gone (SIGKILL, out of memory) `died`.

    Same host: its pid must be alive and the same process; another host: its heartbeat must be recent (a few of
    the record's heartbeat intervals)."""
    status = record.get("status", "?")
    process = record.get("process")
    if status != "running" or not isinstance(process, dict):
        return status
    stale_after = HEARTBEATS_MISSED * float(record.get("heartbeat_every_s") or HEARTBEAT_S)
    return "running" if is_running(process, record.get("heartbeat_at"), stale_after) else "died"


def died_at(record: dict) -> str:
    """Where a run that died got to: its last step and the time of its last heartbeat."""
    step = (record.get("progress") or {}).get("global_step")
    return f"died at step {step}, last seen {record.get('heartbeat_at') or record.get('updated_at')}"
