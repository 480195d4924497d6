"""A real two-node SLURM cluster on this machine (scripts/slurm_cluster.sh): one-node and two-node CPU jobs train,
save once, are preempted and requeued, lose a node and resume, and end where one process ends."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch
from conftest import ROOT, run_in_processes

SCRIPTS = ROOT / "tests/scripts"
sys.path.insert(0, str(SCRIPTS))  # record_steps, for the runs in this process

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


def submit(
    env, fit_args, run_dir: Path, *extra: str, nodes: int = 1, strategy: str = "ddp", recipe: str = "lora"
) -> tuple[str, Path]:
    """`lightning-ft slurm submit` of a 2-task CPU job of a recipe (one node x 2 tasks, or two nodes x 1); (job id,
    job folder)."""
    tasks = 2 // nodes
    args = fit_args("--trainer.devices", str(tasks), "--trainer.max_epochs", "-1", *extra, run_dir=run_dir)[1:]
    out = lightning_ft(
        env, "slurm", "submit", "--config", ROOT / f"configs/{recipe}.yaml",
        "--config", ROOT / f"configs/strategy/{strategy}.yaml",
        "--nodes", nodes, "--ntasks-per-node", tasks, "--cpus-per-task", "1", *args,
    )  # fmt: skip
    job = re.search(r"submitted job (\d+)", out).group(1)
    return job, max((run_dir / "slurm").iterdir())


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


# -- two nodes --------------------------------------------------------------------------------------------------------

# Exact comparisons: a constant schedule (a resumed first half would end a cosine), no dropout (its masks differ with
# the number of processes), fp32 (bf16 rounding differs with the split), padded batches of the same examples.
EXACT = [
    "--model.optim.scheduler", "constant", "--trainer.precision", "32-true",
    "--data.batching", "pad", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
    "--trainer.log_every_n_steps", "1", "--trainer.logger", json.dumps({"class_path": "CSVLogger", "init_args": {"save_dir": ""}}),
]  # fmt: skip
GLOBAL_BATCH = 4  # x accumulation 4 in the recipes: 32 examples make 2 steps an epoch
METHOD_EXACT = {"lora": ["--model.method.dropout", "0.0"], "full": []}


def exact(recipe: str) -> list[str]:
    return [*EXACT, *METHOD_EXACT[recipe]]


@pytest.fixture(scope="module")
def one_process_runs() -> dict[tuple[str, int], Path]:
    """One-process runs of the global batch, by recipe and max_steps: what every layout must end equal to."""
    return {}


def one_process_args(fit_args, run_dir: Path, max_steps: int, *extra: str, recipe: str = "lora") -> list[str]:
    steps = ["--data.batch_size", str(GLOBAL_BATCH), "--trainer.max_steps", str(max_steps)]
    args = fit_args("--trainer.max_epochs", "-1", *exact(recipe), *steps, *extra, run_dir=run_dir)
    return [args[0], "--config", str(ROOT / f"configs/{recipe}.yaml"), *args[1:]]


def one_process(cli, fit_args, tmp_path_factory, runs: dict, max_steps: int, recipe: str = "lora") -> Path:
    if (recipe, max_steps) not in runs:
        run_dir = tmp_path_factory.mktemp(f"one-process-{recipe}-{max_steps}")
        assert cli(one_process_args(fit_args, run_dir, max_steps, recipe=recipe)) == 0
        runs[recipe, max_steps] = run_dir
    return runs[recipe, max_steps]


def two_nodes(
    env, fit_args, run_dir: Path, max_steps: int, *extra: str, strategy: str = "ddp", recipe: str = "lora"
) -> tuple[str, Path]:
    per_process = ["--data.batch_size", str(GLOBAL_BATCH // 2), "--trainer.max_steps", str(max_steps)]
    return submit(
        env, fit_args, run_dir, *exact(recipe), *per_process, *extra, nodes=2, strategy=strategy, recipe=recipe
    )


def finished(env, job: str, timeout: float = 600) -> str:
    return wait_for(lambda: (s := job_state(env, job)) in ("COMPLETED", "FAILED", "CANCELLED") and s, timeout, "job")


def step_losses(run_dir: Path) -> dict[int, float]:
    """Every step's train_loss, from the CSV logger's files of each start of the run."""
    return {
        int(row["step"]): float(row["train_loss"])
        for path in sorted((run_dir / "lightning_logs").glob("version_*/metrics.csv"))
        for row in csv.DictReader(path.open())
        if row.get("train_loss")
    }


def trained(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    """The same steps on the same layout: the same weights."""
    result, expected = trained(run_dir), trained(reference)
    assert result["global_step"] == expected["global_step"]
    assert result["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(result["state_dict"][key], value, atol=1e-6, rtol=1e-5)


def assert_trains_like_one_process(run_dir: Path, reference: Path) -> None:
    """Another split of the same global batches: the same loss at every step and the same weights, up to fp32 sums
    in another order (two processes' halves and an all-reduce against one whole batch), which AdamW amplifies in a
    few weights: its first steps move every weight by about lr whatever the gradient's size, so one whose gradient
    is ~0 goes either way. Seen over 6 steps at lr 2e-4: losses within 1.4e-5 relative; weights off by 7e-5 (DDP)
    and 4.5e-4 (FSDP2) of their norm, where one step fewer is 3.4e-3 off. Two nodes equal two processes on one
    node exactly (the resume tests compare those)."""
    for step, loss in step_losses(reference).items():
        assert step_losses(run_dir)[step] == pytest.approx(loss, rel=5e-5), step
    result, expected = trained(run_dir), trained(reference)
    assert result["global_step"] == expected["global_step"]
    assert result["state_dict"].keys() == expected["state_dict"].keys()
    off = torch.cat([(result["state_dict"][k] - v).flatten() for k, v in expected["state_dict"].items()])
    size = torch.cat([v.flatten() for v in expected["state_dict"].values()])
    assert off.norm() <= 1e-3 * size.norm(), (off.norm() / size.norm(), off.abs().max())


def audited(env, run_dir: Path, out: Path) -> dict:
    """The job's environment with the write audit on (tests/scripts/write_audit)."""
    out.mkdir()
    path = os.pathsep.join(filter(None, [str(ROOT / "tests/scripts/write_audit"), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path, "WRITE_AUDIT_ROOT": str(run_dir), "WRITE_AUDIT_DIR": str(out)}


def writes(out: Path) -> dict[str, list[str]]:
    """{path: the global rank of each write to it} from the job's processes (not from the submitting command)."""
    by_path: dict[str, list[str]] = {}
    for record in out.glob("*.txt"):
        for line in record.read_text().splitlines():
            rank, _, path = line.split(" ", 2)
            if rank != "-":
                by_path.setdefault(path, []).append(rank)
    return by_path


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_nodes_train_like_one_process_and_write_each_file_once(
    slurm_env, cli, fit_args, tmp_path, tmp_path_factory, one_process_runs, strategy
):
    """2 nodes x 1 process, each node's SLURM_NODEID its node rank and node1 the master: the same loss at every step
    and the same trained weights as one process with the whole batch; every file in the run dir has one writer,
    process 0 (config.yaml once, run.json, the checkpoints, the logger's files)."""
    reference = one_process(cli, fit_args, tmp_path_factory, one_process_runs, 6)
    run_dir = tmp_path / "run"
    env = audited(slurm_env, run_dir, tmp_path / "audit")
    job, folder = two_nodes(env, fit_args, run_dir, 6, strategy=strategy)
    assert finished(slurm_env, job) == "COMPLETED", log_text(folder, job)[-3000:]
    log = log_text(folder, job)
    assert f"lightning-ft: job {job} (restart 0) on node[1-2]" in log
    assert step_losses(run_dir).keys() == set(range(6))
    assert_trains_like_one_process(run_dir, reference)

    written = writes(tmp_path / "audit")
    twice = {path: ranks for path, ranks in written.items() if len(set(ranks)) > 1}
    assert not twice, f"written by more than one process: {twice}"
    for name in ("config.yaml", "run.json", "checkpoints/last.ckpt", "lightning_logs/version_0/metrics.csv"):
        assert set(written[str(run_dir / name)]) == {"0"}, name
    assert len(written[str(run_dir / "config.yaml")]) == 1
    assert json.loads((run_dir / "run.json").read_text())["hardware"]["num_nodes"] == 2


@pytest.fixture(scope="module")
def two_process_runs() -> dict[int, Path]:
    """Runs of 2 processes on one node (Lightning's launcher, no SLURM), by max_steps: what two nodes must equal."""
    return {}


def two_processes_args(
    fit_args, run_dir: Path, max_steps: int, *extra: str, recipe: str = "lora", strategy: str = "ddp"
) -> list[str]:
    steps = ["--data.batch_size", str(GLOBAL_BATCH // 2), "--trainer.max_steps", str(max_steps)]
    args = fit_args(
        "--trainer.devices", "2", "--trainer.max_epochs", "-1", *exact(recipe), *steps, *extra, run_dir=run_dir
    )
    configs = [
        "--config",
        str(ROOT / f"configs/{recipe}.yaml"),
        "--config",
        str(ROOT / f"configs/strategy/{strategy}.yaml"),
    ]
    return ["-m", "lightning_ft", args[0], *configs, *args[1:]]


def two_processes(fit_args, tmp_path_factory, runs: dict, max_steps: int) -> Path:
    if max_steps not in runs:
        run_dir = tmp_path_factory.mktemp(f"two-processes-{max_steps}")
        run_in_processes(*two_processes_args(fit_args, run_dir, max_steps))
        runs[max_steps] = run_dir
    return runs[max_steps]


def task_process(job: str, rank: int) -> psutil.Process:
    """The training process of a job's task (what srun started on its node)."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            environ = process.environ()
            parent = process.parent()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        ours = environ.get("SLURM_JOB_ID") == job and environ.get("SLURM_PROCID") == str(rank)
        if ours and "lightning_ft" in " ".join(process.info["cmdline"] or []) and parent.name() == "slurmstepd":
            return process
    raise AssertionError(f"no process of job {job}'s rank {rank}")


LONG = 48  # steps: long enough that a signal sent after the first ones lands mid-run


def test_a_killed_node_stops_the_job_within_a_minute_naming_it_and_a_rerun_resumes(
    slurm_env, fit_args, tmp_path, tmp_path_factory, two_process_runs
):
    """SIGKILL to node 2's process: node 1's stops within 60 s with one line naming the lost rank (not after the
    30-minute collective timeout), the run record says failed and why, and the job rerun resumes from the last
    checkpoint to the uninterrupted run's weights."""
    reference = two_processes(fit_args, tmp_path_factory, two_process_runs, LONG)
    run_dir = tmp_path / "run"
    every = ["--checkpoint.every_n_train_steps", "4"]
    job, folder = two_nodes(slurm_env, fit_args, run_dir, LONG, *every)
    wait_for(lambda: (run_dir / "checkpoints/last.ckpt").is_file(), 600, "a first checkpoint")
    victim = task_process(job, rank=1)
    victim.kill()
    killed = time.monotonic()
    state = finished(slurm_env, job)
    took, log = time.monotonic() - killed, log_text(folder, job)
    assert state == "FAILED" and took < 60, (state, took, log[-3000:])
    assert f"error: lost rank 1 (node 1, host node2, pid {victim.pid})" in log, log[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("lost rank 1 (node 1"), record["error"]
    saved = trained(run_dir)["global_step"]
    assert 0 < saved < LONG

    job, folder = two_nodes(slurm_env, fit_args, run_dir, LONG, *every)  # the same command again
    assert finished(slurm_env, job) == "COMPLETED", log_text(folder, job)[-3000:]
    assert re.findall(r"training from step (\d+)", log_text(folder, job)) == [str(saved)]
    assert_same_weights(run_dir, reference)


def test_usr1_to_one_node_stops_both_at_one_step_saves_once_and_requeues_once(
    slurm_env, fit_args, tmp_path, tmp_path_factory, two_process_runs
):
    """SIGUSR1 to node 2's process alone (as a node's slurmd delivers it) and to the batch shell: both processes
    stop after the same step, process 0 saves it once and requeues the job once, and the requeued job resumes from
    that step and ends at exactly max_steps with the uninterrupted run's weights. (Before, process 0 learnt only
    that some process was signalled, saved, and did not requeue: the job ended at that step.)"""
    reference = two_processes(fit_args, tmp_path_factory, two_process_runs, LONG)
    run_dir = tmp_path / "run"
    env = audited(slurm_env, run_dir, tmp_path / "audit")
    job, folder = two_nodes(env, fit_args, run_dir, LONG)
    wait_for(lambda: "checkpoints at the next optimizer step" in log_text(folder, job), 600, "training to start")
    time.sleep(1)  # a few steps in
    task_process(job, rank=1).send_signal(signal.SIGUSR1)
    # SLURM signals the batch shell too (`scancel --signal=USR1 --full`, or before the time limit): bash would die
    # of it, and end the job, without the trap job.sbatch sets
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=slurm_env, check=True)
    assert finished(slurm_env, job) == "COMPLETED", log_text(folder, job)[-3000:]
    log = log_text(folder, job)
    stops = re.findall(rf"stopped on SIGUSR1 at step (\d+): saved (\S+); requeued SLURM job {job}", log)
    assert len(stops) == 1, log[-3000:]  # printed by process 0, for both
    step = int(stops[0][0])
    assert 0 < step < LONG
    assert log.count(f"lightning-ft: job {job} (restart 1)") == 1 and "(restart 2)" not in log
    assert [int(s) for s in re.findall(r"training from step (\d+)", log)] == [0, step]
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    written = writes(tmp_path / "audit")
    assert set(written[str(run_dir / "checkpoints/last.ckpt")]) == {"0"}
    assert_same_weights(run_dir, reference)


@pytest.mark.parametrize("recipe,strategy", [("lora", "ddp"), ("full", "fsdp2")])
def test_a_run_saved_on_two_nodes_resumes_on_one_node_of_two_processes_then_on_one_process(
    slurm_env, cli, fit_args, tmp_path, tmp_path_factory, one_process_runs, monkeypatch, recipe, strategy
):
    """2 nodes x 1 process to step 3 (mid-pass), then 1 node x 2 processes to step 5 (a pass's end), then 1 x 1 to
    step 6, all with the same global batch: 6 steps of 16 examples are 3 passes over the 32, and every example is
    seen exactly 3 times (none repeated, none skipped); each step's loss and the end are one process's."""
    reference = one_process(cli, fit_args, tmp_path_factory, one_process_runs, 6, recipe)
    run_dir, log = tmp_path / "run", tmp_path / "batches.jsonl"
    record = f"--trainer.callbacks+={json.dumps({'class_path': 'record_steps.RecordSteps', 'init_args': {'path': str(log)}})}"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")])))
    env = {**slurm_env, "PYTHONPATH": os.environ["PYTHONPATH"]}
    job, folder = two_nodes(env, fit_args, run_dir, 3, record, strategy=strategy, recipe=recipe)
    assert finished(slurm_env, job) == "COMPLETED", log_text(folder, job)[-3000:]
    run_in_processes(*two_processes_args(fit_args, run_dir, 5, record, recipe=recipe, strategy=strategy))
    assert cli(one_process_args(fit_args, run_dir, 6, record, recipe=recipe)) == 0
    seen = Counter(i for line in log.read_text().splitlines() for i in json.loads(line)["ids"])
    assert seen == dict.fromkeys(range(32), 3)
    assert step_losses(run_dir).keys() == set(range(6))
    assert_trains_like_one_process(run_dir, reference)
