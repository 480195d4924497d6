"""The request, feedback and drift-alert logs of a server: JSON lines in LOGDIR (the schema serving/logs.py reads),
rotated by the standard library's RotatingFileHandler, PII redacted by the data layer's scrubber unless told not to.

A line is written and flushed before its response is sent, so a response the client has means a line on disk.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path

from lightning_ft.data.quality import scrub_pii

REQUESTS, FEEDBACK, ALERTS = "requests.jsonl", "feedback.jsonl", "alerts.jsonl"


def redacted(value):
    """Text, chat turns or label scores with e-mails, phone numbers, card numbers and IPs replaced."""
    if isinstance(value, str):
        return scrub_pii(value)[0]
    if isinstance(value, list):
        return [redacted(item) for item in value]
    if isinstance(value, dict):
        return {key: redacted(item) if key != "role" else item for key, item in value.items()}
    return value


class JsonLines:
    """One rotated JSONL file; opened on first use (the spec holding it is pickled into other processes)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.logger: logging.Logger | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "logger": None}

    def write(self, entry: dict) -> None:
        if self.logger is None:
            self.logger = logging.getLogger(f"lightning_ft.serving.{self.path}")
            self.logger.propagate, self.logger.level = False, logging.INFO
            handler = RotatingFileHandler(
                self.path, maxBytes=self.max_bytes, backupCount=self.backups, encoding="utf-8"
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger.handlers = [handler]
        self.logger.info(json.dumps(entry, ensure_ascii=False))  # the handler flushes every record


class RequestLog:
    """requests.jsonl and feedback.jsonl of one server."""

    def __init__(self, folder: Path, redact: bool = True, max_bytes: int = 64 * 2**20, backups: int = 10) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.redact = folder, redact
        self.requests = JsonLines(folder / REQUESTS, max_bytes, backups)
        self.ratings = JsonLines(folder / FEEDBACK, max_bytes, backups)
        self.alerts = JsonLines(folder / ALERTS, max_bytes, backups)

    def request(self, entry: dict) -> None:
        if self.redact:
            entry = {**entry, "input": redacted(entry.get("input")), "output": redacted(entry.get("output"))}
        self.requests.write({"time": now(), **entry})

    def feedback(self, entry: dict) -> None:
        if self.redact and entry.get("comment"):
            entry = {**entry, "comment": redacted(entry["comment"])}
        self.ratings.write({"time": now(), **entry})

    def alert(self, entry: dict) -> None:
        self.alerts.write({"time": now(), **entry})

    def served_ids(self) -> set[str]:
        """Response ids in the request logs on disk (rotated files too): what feedback may name."""
        ids = set()
        for path in sorted(self.folder.glob(REQUESTS + "*")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    ids.add(json.loads(line)["id"])
                except (ValueError, KeyError, TypeError):
                    continue  # serving/logs.py names bad lines; here one only means an id feedback cannot name
        return ids


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
