"""`lightning-ft slurm submit`: the sbatch job for a fit configuration, with devices matching the allocation."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lightning_ft.errors import UserError

TEMPLATE = Path(__file__).with_name("job.sbatch")
WARNING_SECONDS = 90  # SIGUSR1 this long before the time limit: enough to finish a step and save a checkpoint
NON_CPU_ACCELERATORS = ("gpu", "cuda", "mps", "tpu")
SAFE_DIRECTIVE = re.compile(r"[^\s\x00-\x1f\x7f'\"\\`$;&|<>]+")  # printable: no whitespace, quoting or shell syntax


@dataclass(frozen=True)
class JobRequest:
    """What `slurm submit` was asked for; None leaves the cluster's default."""

    nodes: int = 1
    gpus_per_node: int = 0
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    job_name: str | None = None
    dry_run: bool = False


def check_request(request: JobRequest) -> None:
    """Every value before anything is written: counts in range, a time SLURM reads, and no value that would break
    out of its `#SBATCH` line (sbatch reads those lines word by word and stops at the first line that is not one)."""
    for name in ("nodes", "ntasks_per_node", "cpus_per_task"):
        if getattr(request, name) is not None and getattr(request, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if request.gpus_per_node < 0:
        raise UserError("--gpus-per-node must be 0 (a CPU job) or more")
    if request.time and not re.fullmatch(r"(\d+-)?\d+(:\d\d){0,2}", request.time):
        raise UserError(f"--time {request.time}: use MINUTES, HH:MM:SS or DAYS-HH:MM:SS")
    for name in ("partition", "account", "job_name"):
        check_directive(f"--{name.replace('_', '-')}", getattr(request, name))
    if not request.dry_run and shutil.which("sbatch") is None:
        raise UserError("sbatch is not on PATH: submit from a SLURM login node, or write the job with --dry-run")


def check_directive(flag: str, value) -> None:
    """A value for an `#SBATCH --key=value` line: one word of printable characters."""
    if value is not None and not SAFE_DIRECTIVE.fullmatch(str(value)):
        raise UserError(
            f"{flag} {str(value)!r}: a SLURM job value must be one word of printable characters (no spaces, quotes, "
            "newlines or control characters): sbatch would misread the job script"
        )


def job_name(run_dir: Path) -> str:
    """The default job name: the run dir's name, with anything sbatch would misread replaced."""
    return re.sub(r"[^\w.+-]", "_", run_dir.name) or "lightning-ft"


def job_devices(request: JobRequest, devices, num_nodes: int, accelerator: str) -> dict:
    """The trainer settings that match the allocation: one task per device on every node.

    A config that already names a different device count or node count is a mistake to report, not to override:
    the job would train with another global batch than the one the config was tuned for.
    """
    count = int(devices) if str(devices).isdigit() else None
    if count is None and str(devices) not in ("auto", "-1"):
        raise UserError(f"--trainer.devices {devices}: a SLURM job needs a count (one task per device), or auto")
    if request.gpus_per_node:
        if str(accelerator) == "cpu":
            raise UserError(f"--gpus-per-node {request.gpus_per_node} with --trainer.accelerator cpu: drop one")
        tasks, accelerator = request.gpus_per_node, "gpu"
        if count is not None and count != tasks:
            raise UserError(f"--trainer.devices {count} != --gpus-per-node {tasks}: Lightning runs one task per GPU")
    else:
        if str(accelerator) in NON_CPU_ACCELERATORS:
            raise UserError(f"--trainer.accelerator {accelerator} needs --gpus-per-node")
        tasks, accelerator = count or request.ntasks_per_node or 1, "cpu"
    if request.ntasks_per_node is not None and request.ntasks_per_node != tasks:
        raise UserError(
            f"--ntasks-per-node {request.ntasks_per_node} != {tasks} devices per node: "
            "Lightning runs one task per device"
        )
    if int(num_nodes) not in (1, request.nodes):
        raise UserError(f"--trainer.num_nodes {num_nodes} != --nodes {request.nodes}")
    return {"devices": tasks, "num_nodes": request.nodes, "accelerator": accelerator}


def render(request: JobRequest, tasks_per_node: int, job_dir: Path, workdir: Path, command: list[str]) -> str:
    """The sbatch script: the resources, logs beside the job (appended across requeues), and `srun command` (each
    word quoted for the shell)."""
    directives = {
        "job-name": request.job_name,
        "nodes": request.nodes,
        "ntasks-per-node": tasks_per_node,
        "gpus-per-node": request.gpus_per_node or None,
        "cpus-per-task": request.cpus_per_task,
        "partition": request.partition,
        "time": request.time,
        "account": request.account,
        "chdir": workdir,
        "output": job_dir / "%j.out",
        "error": job_dir / "%j.err",
    }
    for key, value in directives.items():
        check_directive(f"#SBATCH --{key}", value)
    threads = f"export OMP_NUM_THREADS={request.cpus_per_task}" if request.cpus_per_task else ""
    return TEMPLATE.read_text().format(
        directives="\n".join(f"#SBATCH --{key}={value}" for key, value in directives.items() if value is not None),
        warning_seconds=WARNING_SECONDS,
        environment=threads,
        command=shlex.join(command),
    )


def submit(script: Path) -> str:
    """sbatch the script; its job id."""
    result = subprocess.run(["sbatch", "--parsable", str(script)], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"sbatch {script}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]
