"""Reading what `lightning-ft serve` logged in its LOGDIR: requests.jsonl and feedback.jsonl, one JSON object a line.

Both are rotated by logging.handlers.RotatingFileHandler (requests.jsonl.1, .2, ... are older): every rotated file
is read, oldest first. A malformed line is an error naming its file and line: a report that silently skipped some
requests would be wrong without saying so.

A response's feedback is the latest rating logged for its id: the log is append-only, so a user who changes their
mind rates again. A rating is liked when it is a thumbs up or >= 4 of 5; its score is 1/0 for thumbs, (r-1)/4 for
1-5, so both kinds average on one 0-1 scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lightning_ft.data.sources import read_jsonl
from lightning_ft.errors import UserError

REQUESTS_LOG = "requests.jsonl"
FEEDBACK_LOG = "feedback.jsonl"
ENDPOINTS = ("chat.completions", "completions", "classify")
# Optional numeric fields of a request and whether they must be whole numbers.
NUMBERS = {"ttft_s": False, "prompt_tokens": True, "completion_tokens": True, "confidence": False}


@dataclass
class Logs:
    """The requests of a LOGDIR in the order they were logged, each with a "feedback" key (its latest feedback
    line, or None); `unmatched` counts feedback lines whose response is not in the requests log (rotated away)."""

    requests: list[dict]
    feedback_lines: int
    unmatched: int


def is_liked(rating: bool | int) -> bool:
    return rating is True or (not isinstance(rating, bool) and rating >= 4)


def rating_score(rating: bool | int) -> float:
    return float(rating) if isinstance(rating, bool) else (rating - 1) / 4


def is_error(request: dict) -> bool:
    """A request that got no answer: an HTTP error, or an error logged after a 200 (a stream that broke)."""
    return not 200 <= request["status"] < 300 or request.get("error") is not None or request.get("output") is None


def log_files(logdir: Path, name: str) -> list[Path]:
    """`name` and its rotated files in LOGDIR, oldest first (name.N ... name.1, name)."""
    rotated = [path for path in logdir.glob(f"{name}.*") if re.fullmatch(r"\.\d+", path.suffix)]
    rotated.sort(key=lambda path: -int(path.suffix[1:]))
    current = logdir / name
    return rotated + ([current] if current.is_file() else [])


def read_logs(logdir: str | Path) -> Logs:
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise UserError(f"{logdir}: no such log folder")
    files = log_files(logdir, REQUESTS_LOG)
    if not files:
        raise UserError(f"{logdir}: no {REQUESTS_LOG} here; give the folder `lightning-ft serve` logs into")
    requests = [check_request(record, f"{path}:{line}") for path in files for line, record in read_jsonl(path)]
    latest: dict[str, dict] = {}
    lines = 0
    for path in log_files(logdir, FEEDBACK_LOG):
        for line, record in read_jsonl(path):
            feedback = check_feedback(record, f"{path}:{line}")
            latest[feedback["response_id"]] = feedback
            lines += 1
    known = {request["id"] for request in requests}
    for request in requests:
        request["feedback"] = latest.get(request["id"])
    return Logs(requests, lines, sum(1 for response_id in latest if response_id not in known))


def check_request(record: dict, where: str) -> dict:
    """The record with its optional fields defaulted; a missing or mistyped field is an error naming `where`."""
    for name in ("id", "version"):
        if not isinstance(record.get(name), str) or not record[name]:
            raise UserError(f"{where}: field '{name}' must be a non-empty string, got {record.get(name)!r}")
    if record.get("endpoint") not in ENDPOINTS:
        raise UserError(
            f"{where}: field 'endpoint' must be one of {', '.join(ENDPOINTS)}, got {record.get('endpoint')!r}"
        )
    if not _is_number(record.get("status"), whole=True):
        raise UserError(f"{where}: field 'status' must be an HTTP status code, got {record.get('status')!r}")
    if not _is_number(record.get("latency_s")) or record["latency_s"] < 0:
        raise UserError(f"{where}: field 'latency_s' must be a number of seconds, got {record.get('latency_s')!r}")
    for name, whole in NUMBERS.items():
        value = record.setdefault(name, None)
        if value is not None and not _is_number(value, whole):
            raise UserError(f"{where}: field '{name}' must be {'an integer' if whole else 'a number'} or null")
    record.setdefault("error", None)
    record.setdefault("output", None)
    _check_input(record.get("input"), record["endpoint"], where)
    output = record["output"]
    if record["endpoint"] == "classify" and output is not None:
        if not isinstance(output, dict) or not output or not all(_is_number(p) for p in output.values()):
            raise UserError(f"{where}: field 'output' of a classify request must be {{label: probability}} or null")
    elif output is not None and not isinstance(output, str):
        raise UserError(f"{where}: field 'output' must be text or null")
    return record


def _check_input(value, endpoint: str, where: str) -> None:
    if endpoint != "chat.completions":
        if not isinstance(value, str):
            raise UserError(f"{where}: field 'input' of a {endpoint} request must be text")
        return
    turns_ok = isinstance(value, list) and value
    if not turns_ok or not all(
        isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)
        for turn in value
    ):
        raise UserError(f"{where}: field 'input' of a chat.completions request must be a list of {{role, content}}")


def check_feedback(record: dict, where: str) -> dict:
    if not isinstance(record.get("response_id"), str):
        raise UserError(f"{where}: field 'response_id' must be a string, got {record.get('response_id')!r}")
    rating = record.get("rating")
    if not (isinstance(rating, bool) or (_is_number(rating, whole=True) and 1 <= rating <= 5)):
        raise UserError(f"{where}: field 'rating' must be 1-5 or true/false, got {rating!r}")
    return record


def _is_number(value, whole: bool = False) -> bool:
    kinds = int if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)
