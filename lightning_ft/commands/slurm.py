"""`lightning-ft slurm submit`: a fit configuration as a SLURM job, with devices matching the allocation.

    lightning-ft slurm submit --config X.yaml [--config ...] [--nodes N] [--gpus-per-node G] [job options] [fit flags]

Checks the configuration as `fit` would, sets the trainer's devices and nodes to the allocation, freezes the
resolved config in `<run dir>/slurm/<time>/config.yaml` beside the sbatch script, and submits it (or only writes
and prints it with --dry-run). Everything is checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser

from lightning_ft.checkpoints import resume_point
from lightning_ft.commands.fit import CommandCLI
from lightning_ft.distributed import slurm
from lightning_ft.distributed.presets import check_strategy
from lightning_ft.errors import UserError

USAGE = (
    "usage: lightning-ft slurm submit --config X.yaml [job options] [fit flags] (see lightning-ft slurm submit --help)"
)
JOB_DEFAULTS = {field.name: field.default for field in dataclasses.fields(slurm.JobRequest)}


def add_job_arguments(parser: LightningArgumentParser) -> None:
    """The job's options, spelled as sbatch spells them (also `sweep --slurm`'s)."""
    add = parser.add_argument
    add("--nodes", type=int, default=1, help="nodes of the allocation")
    add("--gpus-per-node", type=int, default=0, help="GPUs per node; 0 is a CPU job (one task per device)")
    add("--ntasks-per-node", type=int | None, default=None, help="tasks per node (default: one per device)")
    add("--cpus-per-task", type=int | None, default=None, help="CPU cores per task (also OMP_NUM_THREADS)")
    add("--partition", type=str | None, default=None, help="the SLURM partition (default: the cluster's)")
    add("--time", type=str | None, default=None, help="time limit: MINUTES, HH:MM:SS or DAYS-HH:MM:SS")
    add("--account", type=str | None, default=None, help="the account to charge")
    add("--job-name", type=str | None, default=None, help="default: the run dir's name")
    add("--dry-run", action="store_true", help="write and print the job script, do not submit it")


def job_request(config) -> slurm.JobRequest:
    request = slurm.JobRequest(**{name: config[name] for name in JOB_DEFAULTS})
    slurm.check_request(request)
    return request


def arguments(parser: LightningArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--ckpt_path", type=str | None, default="auto", help="what the job resumes from (as fit)")


def main(argv: list[str]) -> None:
    if argv[:1] != ["submit"]:
        if argv[:1] in (["-h"], ["--help"]):
            print(f"{USAGE}\n\n{__doc__.split(chr(10) * 2, 2)[2]}")
            return
        raise UserError(USAGE)
    cli = CommandCLI("slurm submit", argv[1:], arguments, build=False)
    submit(cli, job_request(cli.config), keep=("ckpt_path",))


def submit(cli: CommandCLI, request: slurm.JobRequest, keep: tuple[str, ...] = ()) -> Path:
    """Write (and, unless a dry run, submit) the job of a parsed fit configuration; its folder."""
    config = cli.config
    trainer = config.trainer
    for key, value in slurm.job_devices(request, trainer.devices, trainer.num_nodes, trainer.accelerator).items():
        trainer[key] = value
    check_strategy(trainer, cuda=request.gpus_per_node > 0)
    run_dir = Path(trainer.default_root_dir or ".").resolve()
    resume_point(config.get("ckpt_path", "auto"), run_dir)  # refuses a fresh run into a dir that holds checkpoints
    request = dataclasses.replace(request, job_name=request.job_name or slurm.job_name(run_dir))
    job_dir = run_dir / "slurm" / time.strftime("%Y%m%d-%H%M%S")
    frozen = job_dir / "config.yaml"
    command = [sys.executable, "-m", "lightning_ft", "fit", "--config", str(frozen)]
    script_text = slurm.render(request, trainer.devices, job_dir, Path.cwd(), command)  # checks every value first
    job_dir.mkdir(parents=True, exist_ok=False)
    cli.freeze(frozen, keep=keep)
    script = job_dir / "job.sbatch"
    script.write_text(script_text)
    if request.dry_run:
        print(script_text)
        print(f"wrote {script} (not submitted): sbatch {script}")
    else:
        print(f"submitted job {slurm.submit(script)}: {script}; logs in {job_dir}")
    return job_dir
