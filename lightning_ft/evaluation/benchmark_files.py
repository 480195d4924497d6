"""Reading the benchmark files as their authors publish them, checked line by line (see the README of each
folder of ../shared/datasets): a malformed file stops the run naming file and line, before any model work."""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

from lightning_ft.data.sources import read_jsonl
from lightning_ft.errors import UserError

MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
TRUTHFULQA_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")


def _malformed(path: Path, line: int, what: str) -> UserError:
    return UserError(f"malformed benchmark file {path}, line {line}: {what}")


def _open_text(path: Path):
    try:
        return (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8", newline="")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; at least one."""
    rows = read_jsonl(path)
    if not rows:
        raise _malformed(path, 1, "no items")
    return rows


def _text(path: Path, line: int, row: dict, field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str):
        raise _malformed(path, line, f"'{field}' is missing or not a string")
    return value


def _csv_rows(path: Path, header: bool):
    """(line number, row) per CSV record; a dict per row when the file has a header."""
    try:
        with _open_text(path) as f:
            reader = csv.DictReader(f) if header else csv.reader(f)
            for row in reader:
                yield reader.line_num, row
    except csv.Error as err:
        raise _malformed(path, reader.line_num, str(err)) from None
    except UnicodeDecodeError as err:
        raise UserError(f"cannot read {path}: {err}") from None


def read_mmlu(path: Path) -> list[dict]:
    """question, choices, answer (0-3) per row; the header row of this copy (and hendrycks' letter answers) allowed."""
    docs = []
    for line, row in _csv_rows(path, header=False):
        if row == MMLU_HEADER or not any(cell.strip() for cell in row):
            continue
        if len(row) != 6:
            raise _malformed(path, line, f"expected 6 columns (question, 4 choices, answer), got {len(row)}")
        answer = row[5].strip()
        if answer not in ("0", "1", "2", "3", "A", "B", "C", "D"):
            raise _malformed(path, line, f"answer must be 0-3 (or A-D), got {answer!r}")
        docs.append({"question": row[0], "choices": row[1:5], "answer": "0123ABCD".index(answer) % 4})
    if not docs:
        raise _malformed(path, 1, "no questions")
    return docs


SENTENCE_END = re.compile(r"[.!?] ")


def split_context(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b) back from a re-export's `ctx` = ctx_a + " " + ctx_b: ctx_b is the unfinished fragment after
    the last sentence end (ActivityNet items: "the lady"), empty when the context ends a sentence."""
    if ctx.rstrip().endswith((".", "!", "?")):
        return ctx, ""
    ends = list(SENTENCE_END.finditer(ctx))
    if not ends:
        return ctx, ""
    return ctx[: ends[-1].start() + 1], ctx[ends[-1].end() :]


def read_hellaswag(path: Path) -> list[dict]:
    """Rows in rowanz's original fields (activity_label, ctx_a, ctx_b, endings, label), which lm-eval's own
    hellaswag `process_docs` turns into its prompt. rowanz's file is passed through exactly; a text re-export
    (`ctx` only) gets ctx_a and ctx_b back by `split_context`."""
    docs = []
    for line, row in _jsonl(path):
        endings, label = row.get("endings"), row.get("label")
        if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) for e in endings)):
            raise _malformed(path, line, "'endings' must be a list of 4 strings")
        if str(label) not in ("0", "1", "2", "3"):
            raise _malformed(path, line, f"'label' must be 0-3, got {label!r}")
        if "ctx_a" in row:
            ctx_a, ctx_b = _text(path, line, row, "ctx_a"), _text(path, line, row, "ctx_b")
        else:
            ctx_a, ctx_b = split_context(_text(path, line, row, "ctx"))
        activity = _text(path, line, row, "activity_label")
        docs.append(
            {"activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "endings": endings, "label": int(label)}
        )
    return docs


def read_gsm8k(path: Path) -> list[dict]:
    docs = []
    for line, row in _jsonl(path):
        question, answer = _text(path, line, row, "question"), _text(path, line, row, "answer")
        if "####" not in answer:
            raise _malformed(path, line, "'answer' has no final '#### <number>'")
        docs.append({"question": question, "answer": answer})
    return docs


def read_humaneval(path: Path) -> list[dict]:
    fields = ("task_id", "prompt", "test", "entry_point")
    return [{field: _text(path, line, row, field) for field in fields} for line, row in _jsonl(path)]


def _answers(text: str) -> list[str]:
    """The authors' split_multi_answer: "; "-separated, each closed with a period."""
    return [a if a.endswith(".") else a + "." for a in (part.strip() for part in text.split(";")) if a]


def read_truthfulqa(path: Path) -> list[dict]:
    """Per question: the true then the false answers, their labels, and which one is the best answer."""
    docs = []
    for line, row in _csv_rows(path, header=True):
        missing = [column for column in TRUTHFULQA_COLUMNS if not (row.get(column) or "").strip()]
        if missing:
            raise _malformed(path, line, f"empty or missing column(s) {', '.join(missing)}")
        best = _answers(row["Best Answer"])[0]
        true, false = _answers(row["Correct Answers"]), _answers(row["Incorrect Answers"])
        if best not in true:
            true.insert(0, best)
        labels = [1] * len(true) + [0] * len(false)
        docs.append(
            {"question": row["Question"].strip(), "choices": true + false, "labels": labels, "best": true.index(best)}
        )
    if not docs:
        raise _malformed(path, 1, "no questions")
    return docs
