"""A/B and gradual rollout: which version answers a request.

`--route 'v1=0.9,v2=0.1'` splits routed traffic by weight. A request naming a user goes where the user's hash falls
on the cumulative weights, so a user stays on one version while the route stands (and moves only if a changed route
moves the boundary past them); a request without one is drawn at random. The route lives in a file every HTTP
process reads again when it changes: `/admin/route` writes it, and so can an operator.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from lightning_ft.errors import UserError
from lightning_ft.files import write_json_atomically

ROUTED_NAMES = ("", "auto", "default")  # what a request's `model` says when the route should choose


def parse_route(text: str, versions: list[str], flag: str = "--route") -> dict[str, float]:
    """'v1=0.9,v2=0.1' as {version: share}, the shares normalised to sum to 1."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or weight < 0:
            raise UserError(f"{flag} {text!r}: expected name=weight pairs such as 'v1=0.9,v2=0.1'")
        if name not in versions:
            raise UserError(f"{flag}: unknown version '{name}' (serving: {', '.join(versions)})")
        weights[name] = weight
    total = sum(weights.values())
    if not weights or total <= 0:
        raise UserError(f"{flag} {text!r}: give at least one version a positive weight")
    return {name: weight / total for name, weight in weights.items()}


def user_point(user: str) -> float:
    """A user's fixed place in [0, 1): the same on every process and every restart (not Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") / 2**64


class Router:
    """Chooses versions by the route in `path`, re-read whenever the file changes."""

    def __init__(self, path: Path, versions: list[str], initial: dict[str, float]) -> None:
        self.path, self.versions = path, versions
        self.weights, self.stamp = initial, None
        self.set(initial)

    def set(self, weights: dict[str, float]) -> None:
        write_json_atomically(self.path, {"route": weights})
        self.reload()

    def reload(self) -> None:
        stamp = self.path.stat().st_mtime_ns
        if stamp != self.stamp:
            self.weights, self.stamp = json.loads(self.path.read_text())["route"], stamp

    def choose(self, user: str | None) -> str:
        self.reload()
        point = user_point(user) if user else random.random()
        edge = 0.0
        for name, share in self.weights.items():
            edge += share
            if point < edge:
                return name
        return next(name for name, share in reversed(self.weights.items()) if share > 0)  # rounding at 1.0
