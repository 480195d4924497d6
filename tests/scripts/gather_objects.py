"""Two gloo processes gather a Python object each with `all_gather_objects`; exits non-zero if either sees wrong.

tests/test_scale.py runs it as `python gather_objects.py STORE` (STORE: a file for the process group's rendezvous).
"""

from __future__ import annotations

import sys

import torch
import torch.multiprocessing as mp

from lightning_ft.distributed import all_gather_objects


def gather(rank: int, store: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        gathered = all_gather_objects({"rank": rank, "ids": list(range(rank + 1))})
        assert gathered == [{"rank": 0, "ids": [0]}, {"rank": 1, "ids": [0, 1]}], gathered
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(gather, args=(sys.argv[1],), nprocs=2)
