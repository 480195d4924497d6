"""Which process of a launch this is, before Lightning sets up its strategy (which then knows exactly)."""

from __future__ import annotations

import os


def launch_rank(devices) -> int:
    """This process's global rank as its launcher says it: torchrun's RANK, SLURM's SLURM_PROCID, or Lightning's own
    multi-node launch, which sets only NODE_RANK (and LOCAL_RANK in the processes it starts). Lightning reads the
    first two but takes every node's first process of the third for rank 0: each would take the run dir's lock and
    write what only rank 0 may."""
    for name in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    per_node = int(devices) if str(devices).isdigit() else 1  # "auto": before setup only rank 0 or not matters
    return int(os.environ.get("NODE_RANK", "0")) * per_node + int(os.environ.get("LOCAL_RANK", "0"))
