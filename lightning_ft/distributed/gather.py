"""Python objects gathered from every process (torch's all_gather_object), or this one's alone when not distributed."""

from __future__ import annotations

import torch


def all_gather_objects(value) -> list:
    """`value` from every process, by rank; `[value]` outside a process group. Every process must call it together
    (a collective), or it hangs."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered
