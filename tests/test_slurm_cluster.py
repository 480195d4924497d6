"""A real one-node SLURM cluster (scripts/slurm_cluster.sh): submit a CPU DDP job; preempt, requeue and resume one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

pytestmark = pytest.mark.slurm
CLUSTER = ROOT / "scripts/slurm_cluster.sh"


@pytest.fixture(scope="module")
def slurm_env():
    """SLURM_CONF of a cluster started for these tests, stopped after them (only the daemons it started)."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (slurmd, munged, apt-get)")
    state = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))  # short: slurmd's socket paths are limited
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], check=False, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=True, timeout=120)


def lightning_ft(env, *args) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "lightning_ft", *map(str, args)], check=False, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def job_state(env, job: str) -> str:
    shown = subprocess.run(
        ["scontrol", "show", "job", job], check=False, env=env, capture_output=True, text=True
    ).stdout
    return re.search(r"JobState=(\S+)", shown).group(1)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def submit(env, fit_args, run_dir: Path, *extra: str) -> tuple[str, Path]:
    """`lightning-ft slurm submit` of a 2-task CPU DDP LoRA job; (job id, job folder)."""
    args = fit_args("--trainer.devices", "2", "--trainer.max_epochs", "-1", *extra, run_dir=run_dir)[1:]
    out = lightning_ft(
        env, "slurm", "submit", "--config", ROOT / "configs/lora.yaml", "--config", ROOT / "configs/strategy/ddp.yaml",
        "--ntasks-per-node", "2", "--cpus-per-task", "1", *args,
    )  # fmt: skip
    job = re.search(r"submitted job (\d+)", out).group(1)
    return job, next((run_dir / "slurm").iterdir())


def log_text(folder: Path, job: str) -> str:
    return "".join(path.read_text() for path in (folder / f"{job}.out", folder / f"{job}.err") if path.exists())


def test_a_submitted_two_task_ddp_job_trains_and_leaves_checkpoint_and_logs(slurm_env, fit_args, tmp_path):
    job, folder = submit(slurm_env, fit_args, tmp_path / "run", "--trainer.max_steps", "4")
    state = wait_for(lambda: (s := job_state(slurm_env, job)) in ("COMPLETED", "FAILED", "CANCELLED") and s, 600, "job")
    log = log_text(folder, job)
    assert state == "COMPLETED", log[-3000:]
    assert f"lightning-ft: job {job} (restart 0)" in log
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == 4
    assert (tmp_path / "run/config.yaml").is_file()
    assert "`Trainer.fit` stopped: `max_steps=4` reached" in log


def test_usr1_checkpoints_requeues_and_the_job_resumes_to_exactly_max_steps(slurm_env, fit_args, tmp_path):
    max_steps = 40
    no_validation = ["--trainer.limit_val_batches", "0"]
    job, folder = submit(slurm_env, fit_args, tmp_path / "run", "--trainer.max_steps", str(max_steps), *no_validation)
    wait_for(lambda: "checkpoints at the next optimizer step" in log_text(folder, job), 600, "training to start")
    time.sleep(1)  # a few steps in
    subprocess.run(["scancel", "--signal=USR1", "--full", job], env=slurm_env, check=True)

    state = wait_for(lambda: (s := job_state(slurm_env, job)) in ("COMPLETED", "FAILED", "CANCELLED") and s, 900, "job")
    log = log_text(folder, job)
    assert state == "COMPLETED", log[-3000:]
    preempted = re.search(r"stopped on SIGUSR1 at step (\d+): saved (\S+); requeued SLURM job " + job, log)
    assert preempted, log[-3000:]
    step = int(preempted.group(1))
    assert 0 < step < max_steps
    assert f"lightning-ft: job {job} (restart 1)" in log
    starts = [int(s) for s in re.findall(r"training from step (\d+)", log)]
    assert starts == [0, step]  # the requeued run started exactly where the checkpoint was taken
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == max_steps
