"""Scale-out correctness on CPU: the loss is the token-weighted mean over the global batch, whatever the split."""

from __future__ import annotations

import random
import subprocess
import sys

import torch
from conftest import ROOT, WORDS, write_jsonl


def varied_rows(n: int) -> list[dict]:
    """Instructions whose answers run from 1 to 12 words: a mean of per-batch means would weigh them wrongly."""
    rng = random.Random(3)
    return [{"instruction": "Say words.", "output": " ".join(rng.choices(WORDS, k=1 + i % 12))} for i in range(n)]


def step_gradients(tiny_model, train, tmp_path, batch_size: int, accumulate: int, devices: int) -> dict:
    out = tmp_path / f"grads_{batch_size}_{accumulate}_{devices}.pt"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/scripts/step_gradients.py"),
            str(tiny_model),
            str(train),
            str(batch_size),
            str(accumulate),
            str(devices),
            str(out),
            str(tmp_path / "cache"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return torch.load(out)


def test_one_step_is_the_same_however_the_global_batch_is_split(tiny_model, tmp_path):
    """1 x 4; 1 x 1 x accumulate 4; 2 DDP x 2; 2 DDP x 1 x accumulate 2: the same gradients."""
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(16))
    reference = step_gradients(tiny_model, train, tmp_path, 4, 1, 1)
    assert reference
    for batch_size, accumulate, devices in [(1, 4, 1), (2, 1, 2), (1, 2, 2)]:
        grads = step_gradients(tiny_model, train, tmp_path, batch_size, accumulate, devices)
        assert grads.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(grads[name], value, atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
