"""Preemption and resume: SIGUSR1 checkpoints at a step boundary and stops; a resume takes the newest valid checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from lightning_ft.checkpoints import newest_checkpoint
from lightning_ft.commands import PREEMPTED_EXIT_STATUS


def save_step(path, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}}, path)


def test_newest_valid_checkpoint_wins_over_a_stale_hpc_checkpoint(tmp_path):
    save_step(tmp_path / "hpc_ckpt_1.ckpt", 10)  # Lightning would resume from this one
    save_step(tmp_path / "checkpoints/best-step=20.ckpt", 20)
    save_step(tmp_path / "checkpoints/last.ckpt", 30)
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoints/last.ckpt"

    save_step(tmp_path / "hpc_ckpt_2.ckpt", 40)
    assert newest_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"

    data = (tmp_path / "hpc_ckpt_2.ckpt").read_bytes()
    save_step(tmp_path / "checkpoints/last.ckpt", 50)
    (tmp_path / "checkpoints/last.ckpt").write_bytes(data[: len(data) // 2])  # killed while writing
    assert newest_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_2.ckpt"
    assert newest_checkpoint(tmp_path / "empty") is None


def fit_until_signalled(args: list[str], signum: signal.Signals) -> subprocess.CompletedProcess:
    """Start `lightning-ft fit`, send `signum` to its first process once training runs, and wait for it to stop."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_ft", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = []
    for line in process.stdout:
        output.append(line)
        if "checkpoints at the next optimizer step" in line:
            os.kill(process.pid, signum)
            break
    output += process.stdout.readlines()
    return subprocess.CompletedProcess(args, process.wait(timeout=300), "".join(output))


# SIGUSR1 on one process is the SIGTERM path plus a requeue, which test_slurm_cluster checks on a real cluster.
@pytest.mark.parametrize("signum,devices", [(signal.SIGUSR1, 2), (signal.SIGTERM, 1)], ids=["SIGUSR1-2", "SIGTERM-1"])
def test_a_signal_checkpoints_a_whole_step_stops_and_resumes(cli, fit_args, tmp_path, signum, devices):
    """With 2 processes only the first is signalled: both must stop at the same step (or the other would hang).
    Lightning's own SIGTERM handling would stop after the batch (inside accumulation), save nothing and exit 0."""
    args = fit_args(
        "--trainer.max_steps",
        "1000",
        "--trainer.check_val_every_n_epoch",
        "1000",
        "--trainer.devices",
        str(devices),
        "--trainer.accumulate_grad_batches",
        "2",
    )
    preset = ["--config", str(ROOT / "configs/strategy/ddp.yaml")] if devices > 1 else []
    stopped = fit_until_signalled([args[0], *preset, *args[1:]], signum)
    assert stopped.returncode == PREEMPTED_EXIT_STATUS, stopped.stdout[-3000:]
    last = tmp_path / "run/checkpoints/last.ckpt"
    assert f"stopped on {signum.name} at step " in stopped.stdout
    assert f"saved {last}; rerun the same command to resume" in stopped.stdout
    saved = torch.load(last, weights_only=False)
    step = saved["global_step"]
    assert 0 < step < 1000
    assert saved["optimizer_states"][0]["state"]  # a whole step: the optimizer moments are there
    record = json.loads((tmp_path / "run/run.json").read_text())
    assert (record["status"], record["checkpoints"]["last"], record["progress"]["global_step"]) == (
        "preempted",
        str(last),
        step,
    )

    assert cli(fit_args("--trainer.max_steps", str(step + 3), "--ckpt_path", "last")) == 0
    assert torch.load(last, weights_only=False)["global_step"] == step + 3


def test_a_requeued_slurm_job_resumes_even_when_its_command_starts_afresh(cli, fit_args, tmp_path, monkeypatch, capsys):
    assert cli(fit_args()) == 0
    fresh = fit_args("--trainer.max_steps", "4", "--ckpt_path", "null")
    assert cli(fresh) == 2  # a fresh run must not overwrite checkpoints
    assert "starts afresh, but" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert cli(fresh) == 0
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == 4


def test_a_resumed_run_continues_its_wandb_run(cli, fit_args, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    wandb = ["--trainer.logger", "WandbLogger", "--trainer.logger.init_args.save_dir", str(run)]
    wandb += ["--trainer.logger.init_args.offline", "true", "--trainer.logger.init_args.project", "lightning-ft-tests"]
    assert cli(fit_args(*wandb)) == 0
    assert cli(fit_args(*wandb, "--trainer.max_steps", "4", "--ckpt_path", "last")) == 0
    run_id = (run / "wandb_run_id").read_text().strip()
    # One dir per start (or one, if both started within a second), all for the same run id: a new id would be a new run.
    ids = {path.name.rsplit("-", 1)[1] for path in (run / "wandb").glob("offline-run-*")}
    assert ids == {run_id}
