"""Which process a run is, and whether it still runs: one identity for the run record's heartbeat and the run
dir's lock.

On the same host the pid is asked for, and its start time must match (a pid is reused after the process is gone);
another host's process cannot be asked, so there the age of its last heartbeat decides.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime

import psutil

# A process whose start time differs by more than this from the recorded one is another process with that pid.
SAME_START_S = 1.0


def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def is_running(process: dict, heartbeat_at: str | None = None, stale_after_s: float = 600.0) -> bool:
    """Whether the process of `this_process()`'s dict still runs (another host: whether it beat recently)."""
    if process.get("host") == socket.gethostname():
        try:
            return abs(psutil.Process(int(process["pid"])).create_time() - float(process["started"])) < SAME_START_S
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
            return False
    if heartbeat_at is None:
        return True  # nothing says it stopped
    age = datetime.now(UTC) - datetime.fromisoformat(heartbeat_at)
    return age.total_seconds() < stale_after_s
