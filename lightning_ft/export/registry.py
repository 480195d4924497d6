"""The registry of released versions: `models.json` beside the exports, one entry per `lightning-ft export --version`,
saying what each version is (base, method, format), what it was trained on (the data's fingerprint and files), how
it scored, how its export checked out, and when it was made. `lightning-ft models` lists it; `serve` can name a
version by its tag."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_ft.errors import UserError
from lightning_ft.files import write_json_atomically

REGISTRY_FILE = "models.json"


def read_registry(path: Path) -> list[dict]:
    """The entries, oldest first; none when there is no registry yet."""
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["versions"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a lightning-ft registry ({err})") from None
    return entries


def register(path: Path, record: dict, run: dict | None, output: Path, replace: bool) -> dict:
    """Add the export's entry; a tag already naming another folder is refused unless `replace`."""
    entries = read_registry(path)
    tag = record["version"]
    earlier = next((entry for entry in entries if entry["version"] == tag), None)
    if earlier and earlier["path"] != str(output) and not replace:
        raise UserError(f"{path}: version {tag} is already {earlier['path']}: choose another --version, or --overwrite")
    run = run or {}
    entry = {
        "version": tag,
        "path": str(output),
        "format": record["format"],
        "task": record["task"],
        "base_model": record["base_model"],
        "method": record["method"]["name"],
        "data": run.get("data"),
        "metrics": (run.get("metrics") or {}).get("final") or {},
        "best": (run.get("metrics") or {}).get("best") or {},
        "check": record.get("check"),
        "checkpoint": record["checkpoint"],
        "checkpoint_step": record["checkpoint_step"],
        "created": record["exported_at"],
    }
    entries = [e for e in entries if e["version"] != tag] + [entry]
    write_json_atomically(path, {"versions": entries})
    return entry


def find_version(path: Path, tag: str) -> dict | None:
    return next((entry for entry in read_registry(path) if entry["version"] == tag), None)
