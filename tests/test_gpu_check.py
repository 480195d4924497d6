"""scripts/gpu_check.sh and scripts/gpu_wheels.sh, as far as a CPU machine without the network can check them: both
parse; the wheels that gpu_wheels.sh fetches cover every runtime need of the project (pyproject's dependencies and
its `deepspeed` extra, with what they need in turn) that the GPU machine's packages (scripts/gpu_machine_packages.txt)
do not; `fit` starts with only those two sets importable; built wheels would install for CPython 3.12 there."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def machine_packages() -> set[str]:
    lines = (SCRIPTS / "gpu_machine_packages.txt").read_text().splitlines()
    return {canonicalize_name(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def wheel_pins() -> dict[str, str]:
    """gpu_wheels.sh --list: NAME==VERSION of what it fetches (no network)."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_wheels.sh"), "--list"], check=False, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in done.stdout.split())}


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["deepspeed"]]


def needs_beyond(machine: set[str]) -> set[str]:
    """The distributions the project needs at run time that the machine lacks: pyproject's requirements and, through
    the metadata of what this environment has installed, theirs in turn (a machine package brings its own)."""
    needed: set[str] = set()
    todo = [(r.name, set(r.extras)) for r in runtime_requirements()]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in machine or key in needed:
            continue
        needed.add(key)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: its own needs cannot be read (it is still needed)
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((req.name, set(req.extras)))
    return needed


def test_scripts_parse():
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=False, capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"


def test_the_wheels_cover_what_the_machine_lacks_and_nothing_it_has():
    machine, pins = machine_packages(), wheel_pins()
    assert {"torch", "transformers", "lightning", "peft"} <= machine  # the list is the machine's, not empty
    missing = needs_beyond(machine) - pins.keys()
    assert not missing, f"add to PACKAGES in scripts/gpu_wheels.sh: {sorted(missing)}"
    assert not pins.keys() & machine, "a wheel would shadow the machine's own copy"
    for req in runtime_requirements():  # the pinned versions meet pyproject's own bounds
        if canonicalize_name(req.name) in pins:
            assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), req


# Then `fit --help`, with every module hidden whose distribution is neither on the machine, nor one of the wheels,
# nor needed by a machine package (its version there brings its own needs).
HIDE = """
import importlib.metadata as md, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as c
allowed = set(sys.argv[1].split(","))
def needs(name):
    try:
        return [Requirement(r).name for r in md.distribution(name).requires or [] if "extra ==" not in r]
    except md.PackageNotFoundError:
        return []
todo = list(allowed)
while todo:
    for need in needs(todo.pop()):
        if c(need) not in allowed:
            allowed.add(c(need)); todo.append(c(need))
hidden = {module for module, dists in md.packages_distributions().items()
          if not any(c(d) in allowed for d in dists)} - set(sys.stdlib_module_names) - {"lightning_ft"}
sys.modules.update(dict.fromkeys(hidden))  # None: `import` raises ModuleNotFoundError, find_spec answers None
import runpy
sys.argv = ["lightning-ft", "fit", "--help"]
runpy.run_module("lightning_ft", run_name="__main__")
"""


def test_fit_starts_with_only_the_machine_packages_and_the_wheels():
    allowed = machine_packages() | wheel_pins().keys()
    done = subprocess.run(
        [sys.executable, "-c", HIDE, ",".join(sorted(allowed))],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--model.method" in done.stdout


@pytest.mark.skipif(not (ROOT / "gpu_wheels").is_dir(), reason="no gpu_wheels/ (scripts/gpu_wheels.sh makes it)")
def test_the_fetched_wheels_install_for_cpython_312_on_manylinux():
    wheels = sorted(str(p) for p in (ROOT / "gpu_wheels").glob("*.whl"))
    assert {canonicalize_name(Path(w).name.split("-")[0]) for w in wheels} == wheel_pins().keys()
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28)] + ["--platform=manylinux2014_x86_64"]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--only-binary=:all:",
               "--target", str(ROOT / "gpu_wheels" / "unused"), "--python-version=3.12", "--implementation=cp",
               "--abi=cp312", *platforms, *wheels]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    would = next(line for line in done.stdout.splitlines() if line.startswith("Would install")).split()[2:]
    assert len(would) == len(wheels), would
