"""Grid sweeps: `--grid 'KEY=[v1,v2]'` options become one fit per combination, each with its own run dir."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import yaml

from lightning_ft.errors import UserError


@dataclass(frozen=True)
class Trial:
    name: str  # also the run dir's name: `r=4_lr=0.0001`
    flags: list[str]  # fit flags that set this combination


def parse_grid(option: str) -> tuple[str, list]:
    """'model.method.init_args.r=[4,8,16]' -> ('model.method.init_args.r', [4, 8, 16])."""
    match = re.fullmatch(r"\s*([\w.]+)\s*=\s*(\[.*\])\s*", option)
    if not match:
        raise UserError(f"--grid {option!r}: write KEY=[VALUE, ...], e.g. 'model.method.init_args.r=[4,8]'")
    try:
        values = yaml.safe_load(match.group(2))
    except yaml.YAMLError as err:
        raise UserError(f"--grid {option!r}: the values are not a YAML list ({err.problem})") from None
    if not values:
        raise UserError(f"--grid {option!r}: no values")
    if len(set(map(str, values))) != len(values):
        raise UserError(f"--grid {option!r}: a value is repeated")
    return match.group(1), values


def trials(options: list[str]) -> list[Trial]:
    """Every combination of the grids, in order (the last grid varies fastest)."""
    if not options:
        raise UserError("sweep: give at least one --grid KEY=[VALUE, ...]")
    grids = [parse_grid(option) for option in options]
    keys = [key for key, _ in grids]
    if len(set(keys)) != len(keys):
        raise UserError(f"sweep: a key has two grids: {min(k for k in keys if keys.count(k) > 1)}")
    return [
        Trial(
            name=re.sub(r"[^\w.=+-]", "-", "_".join(f"{short(k)}={v}" for k, v in zip(keys, combination, strict=True))),
            flags=[arg for key, value in zip(keys, combination, strict=True) for arg in (f"--{key}", str(value))],
        )
        for combination in itertools.product(*(values for _, values in grids))
    ]


def short(key: str) -> str:
    """A grid key's last part, for run names: model.method.init_args.r -> r, model.method -> method."""
    return key.rsplit(".", 1)[-1]
