"""Reading records (one dict per example) from data files, each with its line number for error messages."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_ft.errors import UserError

Record = tuple[int, dict]  # (1-based line or item number, the example)


def read_jsonl(path: Path) -> list[Record]:
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: invalid JSON: {err.msg}") from err
            if not isinstance(item, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(item).__name__}")
            records.append((number, item))
    return records


def read_json_array(path: Path) -> list[Record]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise UserError(f"{path}: expected a JSON array of objects")
    return list(enumerate(items, start=1))


READERS = {".jsonl": read_jsonl, ".json": read_json_array}


def check_file(path: str, flag: str) -> Path:
    """The path, if it names an existing file of a supported type; `flag` names its option, for errors."""
    file = Path(path).expanduser()
    if file.suffix.lower() not in READERS:
        raise UserError(f"{flag} {path}: unsupported file type (supported: {', '.join(READERS)})")
    if not file.is_file():
        raise UserError(f"{flag} {path}: no such file")
    return file


def read_records(path: str, flag: str) -> list[Record]:
    """All records of the file at `path`."""
    file = check_file(path, flag)
    return READERS[file.suffix.lower()](file)
