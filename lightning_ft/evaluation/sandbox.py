"""Run model-written Python (HumanEval samples) in a throw-away subprocess, and say passed / failed / timeout.

Executing what a model wrote is a risk: it is arbitrary code, and a wrong program is as capable as a malicious one.
Each sample runs in a fresh `python -I -B` process, its own session (the timeout kills the whole process group),
a fresh temp directory as cwd, HOME and TMPDIR (deleted afterwards), a minimal environment (PATH, HOME, TMPDIR,
LANG: no proxies, tokens or credentials), and `resource` limits set before exec: 1 GiB address space, CPU seconds
just over the timeout, 64 processes, 16 MiB per written file, 256 open files, no core files.

When we are root and the `unshare` tool works (probed once per process, see `isolation()`), each sample also gets:
- a new network namespace: only a loopback device that is down, so no network at all;
- a new PID namespace: it sees and can signal only its own processes, and all of them die with it;
- a private mount namespace in which every mount is remounted read-only, except the sample's temp directory:
  writes to the project, /tmp, /dev/shm or anywhere else fail (and the host's mounts are untouched);
- a switch to the unprivileged user `nobody` (uid/gid 65534) before the sample starts, so it cannot undo the
  read-only mounts, and files it may read are only those any local user may read.

What is NOT isolated: the sample can read every world-readable file (source trees, datasets, model weights that are
not private), use CPU and memory up to the limits, and, without the namespaces (not root, no `unshare`),
write wherever the current user may write, reach the network, and leave background processes that called
setsid(). It shares the kernel with us: this is a guard against accidents (rm -rf, stray writes, runaway loops,
fork bombs), not a security boundary against a hostile model; use a VM or container for that.
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Literal

Status = Literal["passed", "failed", "timeout"]
NOBODY = 65534
MEMORY_BYTES = 1 << 30
FILE_BYTES = 16 << 20
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
NAMESPACES = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]

# Runs inside the new namespaces as root: own the temp dir as a mount, make every other mount read-only, become
# nobody, then exec the sample. Exit 97 when the root mount cannot be made read-only (the probe then falls back).
_CONFINE = r"""
import ctypes, os, re, sys
work, python, program = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
def mount(source, target, flags):
    return libc.mount(source, target.encode(), None, flags, None) == 0
if not mount(work.encode(), work, MS_BIND):
    sys.exit(97)
for line in open("/proc/self/mountinfo").read().splitlines():
    fields = line.split()
    target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
    if target == work:
        continue
    options = fields[5].split(",")
    keep = sum(flag for name, flag in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC))
               if name in options)
    if not mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY | keep) and target == "/":
        sys.exit(97)
os.setgroups([])
os.setgid(NOBODY)
os.setuid(NOBODY)
os.chdir(work)
os.execv(python, [python, "-I", "-B", program])
""".replace("NOBODY", str(NOBODY))


@dataclass(frozen=True)
class Outcome:
    """What became of one program: its status and the tail of its output (for the curious)."""

    status: Status
    output: str


def _limits(timeout: float) -> None:
    """preexec_fn: resource limits, inherited by everything the sample starts."""
    cpu = int(timeout) + 2
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _run(program: str, timeout: float, python: str, confined: bool) -> Outcome:
    work = os.path.realpath(tempfile.mkdtemp(prefix="lft-sandbox-"))  # as /proc/self/mountinfo will name it
    nonce = secrets.token_hex(16)  # printed only when check() returned: an early exit(0) is no pass
    try:
        path = os.path.join(work, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{program}\n\nprint({nonce!r})\n")
        env = {"PATH": SAFE_PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        if confined:
            os.chown(work, NOBODY, NOBODY)
            os.chmod(path, 0o644)
            command = [*NAMESPACES, sys.executable, "-I", "-B", "-c", _CONFINE, work, python, path]
        else:
            command = [python, "-I", "-B", path]
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(
                command,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Only setrlimit runs between fork and exec: no locks, imports or allocation-heavy work.
                preexec_fn=lambda: _limits(timeout),  # noqa: PLW1509
            )
            try:
                returncode = process.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4000))
            output = log.read().decode("utf-8", "replace")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if timed_out:
        return Outcome("timeout", output)
    passed = returncode == 0 and nonce in output.splitlines()
    return Outcome("passed" if passed else "failed", output.replace(nonce, "").rstrip())


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@cache
def _setup() -> tuple[str, bool]:
    """The interpreter for samples, and whether they run confined (probed once: root and a working `unshare`).

    Confined samples run as nobody, who may not be able to reach our interpreter (e.g. a venv on a pyenv Python
    under /root): then the system's python3 runs them; samples need only the standard library.
    """
    if os.geteuid() == 0 and shutil.which("unshare"):
        for python in dict.fromkeys([sys.executable, shutil.which("python3", path=SAFE_PATH)]):
            if python and _run("pass", timeout=30, python=python, confined=True).status == "passed":
                return python, True
    return sys.executable, False


def isolation() -> str:
    """How samples run: "namespaces" (confined, see the module docstring) or "process" (limits only)."""
    return "namespaces" if _setup()[1] else "process"


def run_program(program: str, timeout: float = 10.0) -> Outcome:
    """Run one complete program (solution and its test); passed means it ran to the end with exit status 0."""
    python, confined = _setup()
    return _run(program, timeout, python, confined)


def run_programs(programs: list[str], timeout: float = 10.0, workers: int | None = None) -> list[Outcome]:
    """Run many programs, a few at a time (each is its own process: threads only wait)."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    _setup()  # probe once, before the threads
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda program: run_program(program, timeout), programs))
