"""Loaded by every Python process started with this folder on PYTHONPATH (the processes of a test's SLURM job, which
inherit the submitter's environment): each file the process opens for writing, or renames into place, under
WRITE_AUDIT_ROOT is one line `RANK EVENT PATH` in WRITE_AUDIT_DIR/PID.txt, so a test can count who wrote what.
Python's audit hooks see every open() and os.open(), which torch.save, fsspec and tempfile all go through."""

import os
import sys

ROOT, OUT = os.environ.get("WRITE_AUDIT_ROOT"), os.environ.get("WRITE_AUDIT_DIR")
if ROOT and OUT:
    RANK = os.environ.get("SLURM_PROCID", "-")  # "-": not a task of the job (the submitting command)
    LOG = open(os.path.join(OUT, f"{os.getpid()}.txt"), "a", buffering=1)  # noqa: SIM115 (open while the process is)
    WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITING)
        elif event == "os.rename":  # os.replace too
            path, writing = args[1], True
        else:
            return
        if writing and isinstance(path, str | bytes | os.PathLike):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(ROOT):
                LOG.write(f"{RANK} {event} {path}\n")

    sys.addaudithook(audit)
