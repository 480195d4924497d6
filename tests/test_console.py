"""What the console of a plain `lightning-ft fit` shows: the validation a short run still gets, and no library noise."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

# Lines the libraries print that a user can do nothing about (console.py silences each by its message).
NOISE = (
    "💡 Tip:",
    "is_gradient_checkpointing",
    "Total length of `list` across ranks is zero",
    "is not supported by the model summary",
    "gemm_4bit_forward",
    "LeafSpec",
)


def test_a_run_shorter_than_an_epoch_validates_once_and_stays_quiet(fit_args, tmp_path):
    """lora.yaml validates once an epoch; 1 step of a 2-step epoch still ends with val_loss and a best checkpoint."""
    args = fit_args("--trainer.max_steps", "1", "--trainer.enable_model_summary", "true", "--data.num_workers", "0")
    done = subprocess.run(
        [sys.executable, "-m", "lightning_ft", "fit", "--config", str(ROOT / "configs/lora.yaml"), *args[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "validation at step 1: " in done.stdout and "val_loss" in done.stdout
    run_dir = tmp_path / "run"
    assert [p.name for p in (run_dir / "checkpoints").glob("best-*.ckpt")] == ["best-step=1.ckpt"]
    assert json.loads((run_dir / "checkpoints/selection.json").read_text())["restored_best"]
    assert [line for line in console.splitlines() if any(noise in line for noise in NOISE)] == []
