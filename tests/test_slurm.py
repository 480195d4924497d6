"""`lightning-ft slurm submit`: the job script, the frozen config, and every mistake caught before submission."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from conftest import ROOT


@pytest.fixture
def submit(cli, fit_args, tmp_path, monkeypatch):
    """Run `lightning-ft slurm submit` for the tiny fit; returns (exit status, the job folder or None)."""
    monkeypatch.chdir(tmp_path)

    def run(*flags: str, configs=("lora", "strategy/ddp"), fit=()) -> tuple[int, object]:
        args = fit_args("--trainer.devices", "auto", *fit)[1:]
        presets = [arg for name in configs for arg in ("--config", str(ROOT / f"configs/{name}.yaml"))]
        status = cli(["slurm", "submit", *presets, *args, *flags])
        jobs = sorted((tmp_path / "run/slurm").glob("*"))
        return status, jobs[-1] if jobs else None

    return run


def directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, flags=re.MULTILINE))


def test_dry_run_writes_a_cpu_ddp_job_with_its_frozen_config(submit, cli, tmp_path, capsys):
    status, job = submit("--ntasks-per-node", "2", "--dry-run")
    assert status == 0, capsys.readouterr().err
    script = (job / "job.sbatch").read_text()
    assert script in capsys.readouterr().out
    assert directives(script) == {
        "job-name": "run",
        "nodes": "1",
        "ntasks-per-node": "2",
        "chdir": str(tmp_path),
        "output": f"{job}/%j.out",
        "error": f"{job}/%j.err",
        "signal": "SIGUSR1@90",
        "open-mode": "append",
    }
    assert "#SBATCH --requeue" in script
    assert re.search(rf"^srun \S+python\S* -m lightning_ft fit --config {job}/config.yaml$", script, flags=re.MULTILINE)
    frozen = yaml.safe_load((job / "config.yaml").read_text())
    assert (frozen["trainer"]["devices"], frozen["trainer"]["num_nodes"], frozen["trainer"]["accelerator"]) == (
        2,
        1,
        "cpu",
    )
    assert frozen["trainer"]["strategy"]["class_path"].endswith("DDPStrategy")
    assert frozen["model"]["method"]["class_path"].endswith("LoRA")
    assert cli(["fit", "--config", str(job / "config.yaml"), "--print_config"]) == 0  # the job's config parses


def test_a_gpu_job_sets_devices_nodes_and_the_cluster_flags(submit, capsys):
    flags = "--nodes 2 --gpus-per-node 4 --cpus-per-task 8 --partition gpu --time 1-00:00:00 --account lab"
    status, job = submit(
        *flags.split(),
        "--job-name",
        "sft",
        "--dry-run",
        configs=("full", "strategy/fsdp"),
        fit=["--trainer.accelerator", "auto"],
    )
    assert status == 0, capsys.readouterr().err
    script = (job / "job.sbatch").read_text()
    found = directives(script)
    assert {k: found[k] for k in ("nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task")} == {
        "nodes": "2",
        "ntasks-per-node": "4",
        "gpus-per-node": "4",
        "cpus-per-task": "8",
    }
    assert (found["partition"], found["time"], found["account"], found["job-name"]) == (
        "gpu",
        "1-00:00:00",
        "lab",
        "sft",
    )
    assert "export OMP_NUM_THREADS=8" in script
    trainer = yaml.safe_load((job / "config.yaml").read_text())["trainer"]
    assert (trainer["devices"], trainer["num_nodes"], trainer["accelerator"]) == (4, 2, "gpu")


@pytest.mark.parametrize(
    "flags,fit,configs,message",
    [
        (
            ["--ntasks-per-node", "4"],
            ["--trainer.devices", "2"],
            ("lora",),
            "--ntasks-per-node 4 != 2 devices per node",
        ),
        (
            ["--gpus-per-node", "8"],
            ["--trainer.devices", "4", "--trainer.accelerator", "gpu"],
            ("lora",),
            "--trainer.devices 4 != --gpus-per-node 8",
        ),
        (["--nodes", "4"], ["--trainer.num_nodes", "2"], ("lora",), "--trainer.num_nodes 2 != --nodes 4"),
        ([], [], ("lora", "strategy/deepspeed_zero3"), "--trainer.strategy DeepSpeedStrategy needs CUDA GPUs"),
        ([], ["--trainer.accelerator", "gpu"], ("lora",), "--trainer.accelerator gpu needs --gpus-per-node"),
        (["--gpus-per-node", "1"], [], ("lora",), "--gpus-per-node 1 with --trainer.accelerator cpu: drop one"),
        (["--time", "soon"], [], ("lora",), "--time soon: use MINUTES, HH:MM:SS or DAYS-HH:MM:SS"),
        (["--nodes", "0"], [], ("lora",), "--nodes must be at least 1"),
        (["--trainer.nonsense", "1"], [], ("lora",), "nonsense"),
        # a newline would end the #SBATCH line and sbatch would ignore every directive after it
        (["--job-name", "a\nrm -rf ~"], [], ("lora",), "--job-name 'a\\nrm -rf ~': a SLURM job value must be one word"),
        (["--partition", "gpu;reboot"], [], ("lora",), "--partition 'gpu;reboot': a SLURM job value must be one word"),
    ],
)
def test_mistakes_are_one_line_before_anything_is_written(submit, capsys, tmp_path, flags, fit, configs, message):
    status, job = submit(*flags, "--dry-run", fit=fit, configs=configs)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and message in errors[0], errors
    assert job is None


def test_no_sbatch_on_path_is_refused_unless_dry_run(submit, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    status, job = submit()
    assert status == 2 and job is None
    assert "error: sbatch is not on PATH" in capsys.readouterr().err


def test_a_job_into_a_run_dir_with_checkpoints_resumes_unless_told_to_start_afresh(submit, capsys, tmp_path):
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    torch.save({"global_step": 3}, tmp_path / "run/checkpoints/last.ckpt")
    status, job = submit("--dry-run", fit=["--ckpt_path", "null"])
    assert status == 2 and job is None
    assert "--ckpt_path null starts afresh, but" in capsys.readouterr().err
    status, job = submit("--dry-run")
    assert status == 0 and yaml.safe_load((job / "config.yaml").read_text())["ckpt_path"] == "auto"
