#!/usr/bin/env bash
# Wheels for the lent GPU machine, whose python3 (3.12) has the packages of scripts/gpu_machine_packages.txt and no
# package registry to fetch the rest from. Run HERE, where PyPI is reachable: it downloads, for CPython 3.12 on
# manylinux x86-64, only what that machine lacks, pinned to the versions of this checkout's .venv, into gpu_wheels/
# (ignored by git: name it in the device run's `carry`; with the working tree, 64 MiB in all). scripts/gpu_check.sh
# installs them there.
#   scripts/gpu_wheels.sh          # download / build into gpu_wheels/, print the sizes; fails over LIMIT_MIB (55)
#   scripts/gpu_wheels.sh --list   # only print the NAME==VERSION it would fetch (no network)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEST=${DEST:-gpu_wheels}
LIMIT_MIB=${LIMIT_MIB:-55}

# pyproject's [project.dependencies] and its `deepspeed` extra, with what they need in turn, less what the machine
# has (tests/test_gpu_check.py checks that this list covers them all, and that none of it is on the machine).
PACKAGES=(
  bitsandbytes                                            # 4-bit QLoRA, 8-bit optimizers (its wheel: ~41 MiB)
  jsonargparse docstring-parser typeshed-client           # jsonargparse[signatures]
  datasets dill multiprocess                              # datasets (its other needs are on the machine)
  datasketch                                              # near-duplicate detection
  deepspeed hjson pydantic pydantic-core annotated-types typing-inspection  # the deepspeed extra
)
SDIST_ONLY=" deepspeed "  # no wheel on PyPI: built here without its ops (JIT-built if ever used), py3-none-any

# NAME==VERSION, the versions this checkout's venv has; a name the machine has already is a mistake (it would
# shadow the machine's own copy, built for its torch).
mapfile -t PINS < <("$PYTHON" - "${PACKAGES[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from packaging.utils import canonicalize_name

machine = {canonicalize_name(line.strip()) for line in Path("scripts/gpu_machine_packages.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")}
for name in sys.argv[1:]:
    if canonicalize_name(name) in machine:
        sys.exit(f"gpu_wheels.sh: {name} is on the GPU machine already (scripts/gpu_machine_packages.txt)")
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"gpu_wheels.sh: {name} is not installed in this venv ({sys.executable}): make install first")
PY
)
[ ${#PINS[@]} -eq ${#PACKAGES[@]} ] || exit 1
if [ "${1:-}" = --list ]; then printf '%s\n' "${PINS[@]}"; exit 0; fi

rm -rf "$DEST" && mkdir -p "$DEST"
BINARY=() SOURCE=()
for pin in "${PINS[@]}"; do
  case "$SDIST_ONLY" in *" ${pin%%==*} "*) SOURCE+=("$pin") ;; *) BINARY+=("$pin") ;; esac
done
echo "downloading ${#BINARY[@]} wheels for cp312 manylinux x86_64: ${BINARY[*]}"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "${BINARY[@]}"
for pin in "${SOURCE[@]}"; do
  echo "building $pin from its sdist (DS_BUILD_OPS=0: a pure-Python wheel that installs without building)"
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps --no-binary "${pin%%==*}" \
    -w "$DEST" "$pin"
done

# Every file a wheel for CPython 3.12 on manylinux x86_64 (an sdist or a wrong tag would not install there).
"$PYTHON" - "$DEST" "${#PINS[@]}" <<'PY'
import sys
from pathlib import Path
from packaging.utils import parse_wheel_filename

folder, expected = Path(sys.argv[1]), int(sys.argv[2])
files = sorted(folder.iterdir())
bad = [f.name for f in files if f.suffix != ".whl"]
for f in files:
    if f.suffix == ".whl" and not any(
        t.interpreter in ("py3", "py312", "cp312") and t.abi in ("none", "abi3", "cp312")
        and (t.platform == "any" or (t.platform.startswith("manylinux") and t.platform.endswith("_x86_64")))
        for t in parse_wheel_filename(f.name)[3]
    ):
        bad.append(f.name)
if bad or len(files) != expected:
    sys.exit(f"gpu_wheels.sh: {len(files)} files for {expected} packages; not for cp312 manylinux x86_64: {bad}")
PY

ls -l "$DEST" | awk 'NR > 1 {printf "%8.2f MiB  %s\n", $5 / 1048576, $9}'
total=$(du -sb "$DEST" | cut -f1)
awk -v t="$total" -v d="$DEST" -v l="$LIMIT_MIB" 'BEGIN {printf "total: %.1f MiB in %s (limit %s MiB)\n", t / 1048576, d, l}'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_wheels.sh: $DEST is over $LIMIT_MIB MiB: it would not travel with the working tree (64 MiB in all)" >&2
  exit 1
fi
