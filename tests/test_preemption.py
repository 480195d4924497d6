"""Preemption and resume: SIGUSR1 checkpoints at a step boundary and stops; a resume takes the newest valid checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import ROOT, write_jsonl

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
# DPO with its reference precomputed: the resumed run reads the cached reference log-probs instead of recomputing.
PAIRS = ["--data.format", "preference", "--data.train_path", "{data}/pref_train.jsonl"]
PAIRS += ["--data.val_path", "{data}/pref_val.jsonl", "--generation.num_samples", "0"]
DPO = ["--model.objective", "DPO", "--model.objective.reference", "precomputed", "--model.method", "LoRA", *PAIRS]


@pytest.mark.parametrize(
    "signum,devices,objective",
    [(signal.SIGUSR1, 2, []), (signal.SIGTERM, 1, []), (signal.SIGTERM, 1, DPO)],
    ids=["SIGUSR1-2", "SIGTERM-1", "SIGTERM-1-DPO"],
)
def test_a_signal_checkpoints_a_whole_step_stops_and_resumes(
    cli, fit_args, data_dir, tmp_path, caplog, signum, devices, objective
):
    """With 2 processes only the first is signalled: both must stop at the same step (or the other would hang).
    Lightning's own SIGTERM handling would stop after the batch (inside accumulation), save nothing and exit 0."""
    objective = [flag.format(data=data_dir) for flag in objective]
    args = fit_args(
        *objective,
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

    assert cli(fit_args(*objective, "--trainer.max_steps", str(step + 3), "--ckpt_path", "last")) == 0
    assert torch.load(last, weights_only=False)["global_step"] == step + 3
    if objective:
        assert "reference log-probs: read" in caplog.text, caplog.text[-2000:]


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


# Ctrl-C raises KeyboardInterrupt even where this test runs as a background job (which inherits SIGINT ignored).
AS_IN_A_TERMINAL = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from lightning_ft.commands import main; sys.exit(main(sys.argv[1:]))"
)


def still_running(group: int) -> list[int]:
    def running_in_group(pid: int) -> bool:
        try:
            return os.getpgid(pid) == group and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except (ProcessLookupError, psutil.NoSuchProcess):
            return False

    return [pid for pid in psutil.pids() if running_in_group(pid)]


def test_ctrl_c_while_several_processes_tokenize_stops_at_once_in_one_line(tiny_model, tmp_path):
    """A terminal's Ctrl-C signals the whole process group: this process and the tokenizer processes. Sent as the
    progress bar appears, it lands while the pool forks its workers: it used to be swallowed there (the run went on
    and exited 0), or to leave workers behind that waited for work forever."""
    rows = [{"instruction": f"Task {i}: " + "say the word alpha " * 8, "output": "alpha " * 12} for i in range(20_000)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    flags = ["--model.model_name_or_path", str(tiny_model), "--data.train_path", str(train), "--data.num_proc", "2"]
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        command = subprocess.Popen(
            [sys.executable, "-c", AS_IN_A_TERMINAL, "data", *flags, "--data.cache_dir", str(tmp_path / "cache")],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        while "tokenizing train" not in stderr.read_text() and command.poll() is None:
            time.sleep(0.1)
        os.killpg(command.pid, signal.SIGINT)
        status = command.wait(timeout=60)
    deadline = time.monotonic() + 5  # the kernel stops a worker forked at the last moment as its parent exits
    while (left := still_running(command.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    output = stderr.read_text()
    assert status == 130 and output.rstrip().endswith("error: interrupted"), output[-2000:]
    assert "Traceback" not in output and not left
