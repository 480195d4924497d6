"""Rated responses of a LOGDIR as training data: preference pairs, KTO's unpaired feedback, or liked answers.

  preference: for one input (same endpoint, same prompt), liked answers as chosen and not-liked ones as rejected:
      {"prompt", "chosen", "rejected"}; each liked and each not-liked answer is in at least one pair (the fewer side
      is reused in turn), so an input with 2 liked and 3 not-liked answers gives 3 pairs.
  kto: every rated answer, {"prompt", "completion", "label": liked} (the "unpaired" data format).
  instruction: liked answers only: completions as {"instruction", "output"} (the "instruction" format), chat as
      {"messages": input + the answer} (the "chat" format). One file holds one format, so liked answers of both
      endpoints are an error asking for --endpoint.

Prompts are the logged inputs: a list of turns for chat, text for completions; classify requests are left out.
"Liked" is the logs' rule (thumbs up or >= 4 of 5), and everything else rated counts as not liked, as in the
report's win rate. The records then go through the data-quality rules the training pipeline runs (normalisation,
empties, exact duplicates, and PII scrubbing on: the server redacts inputs, but answers may repeat what it missed),
so the file holds what training would keep.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import cycle, islice
from pathlib import Path

from lightning_ft.data.formats import resolve_format
from lightning_ft.data.quality import QualityReport, QualityRules, clean
from lightning_ft.errors import UserError
from lightning_ft.files import output_file, write_atomically
from lightning_ft.serving.logs import is_error, is_liked, read_logs

KINDS = {
    "preference": "preference",
    "kto": "unpaired",
    "instruction": None,
}  # -> data format (instruction: by endpoint)
TEXT_ENDPOINTS = ("chat.completions", "completions")
RULES = QualityRules(scrub_pii=True)


def rated_answers(requests: list[dict], endpoint: str | None) -> list[dict]:
    """Answered, rated requests of the text endpoints (or of `endpoint`) whose answer is text."""
    endpoints = (endpoint,) if endpoint else TEXT_ENDPOINTS
    return [
        request
        for request in requests
        if request["feedback"]
        and request["endpoint"] in endpoints
        and not is_error(request)
        and isinstance(request["output"], str)
    ]


def preference_records(rated: list[dict]) -> tuple[list[dict], int]:
    """The pairs, and how many rated answers found no answer of the other kind to the same input."""
    groups: dict[str, tuple[list[dict], list[dict]]] = {}
    for request in rated:
        key = json.dumps([request["endpoint"], request["input"]], sort_keys=True)
        groups.setdefault(key, ([], []))[0 if is_liked(request["feedback"]["rating"]) else 1].append(request)
    records, unpaired = [], 0
    for liked, disliked in groups.values():
        if not liked or not disliked:
            unpaired += len(liked) + len(disliked)
            continue
        longer, shorter = (liked, disliked) if len(liked) >= len(disliked) else (disliked, liked)
        for first, second in zip(longer, islice(cycle(shorter), len(longer))):
            chosen, rejected = (first, second) if longer is liked else (second, first)
            if chosen["output"] != rejected["output"]:  # one answer both liked and not: no preference to learn
                records.append({"prompt": chosen["input"], "chosen": chosen["output"], "rejected": rejected["output"]})
    return records, unpaired


def instruction_records(rated: list[dict], logdir: str) -> tuple[list[dict], str]:
    liked = [request for request in rated if is_liked(request["feedback"]["rating"])]
    kinds = Counter(request["endpoint"] for request in liked)
    if len(kinds) > 1:
        raise UserError(
            f"{logdir}: liked answers of both chat.completions ({kinds['chat.completions']}) and completions "
            f"({kinds['completions']}), and one file holds one format: add --endpoint chat.completions (chat "
            "records) or --endpoint completions (instruction records)"
        )
    if kinds.get("chat.completions"):
        messages = [[*r["input"], {"role": "assistant", "content": r["output"]}] for r in liked]
        return [{"messages": turns} for turns in messages], "chat"
    return [{"instruction": r["input"], "output": r["output"]} for r in liked], "instruction"


def from_feedback(logdir: str, kind: str, output: str, endpoint: str | None = None) -> dict:
    """Write the training records of LOGDIR's rated answers to `output` (JSONL); print and return the counts."""
    if kind not in KINDS:
        raise UserError(f"--format: choose preference, kto or instruction, got {kind!r}")
    if endpoint is not None and endpoint not in TEXT_ENDPOINTS:
        raise UserError(f"--endpoint: choose {' or '.join(TEXT_ENDPOINTS)}, got {endpoint!r}")
    path = output_file(output)
    logs = read_logs(logdir)
    rated = rated_answers(logs.requests, endpoint)
    if not rated:
        raise UserError(
            f"{logdir}: no rated answers to learn from ({len(logs.requests)} requests, {logs.feedback_lines} feedback "
            f"lines{f', endpoint {endpoint}' if endpoint else ''})"
        )
    counts: dict = {"requests": len(logs.requests), "rated": len(rated)}
    counts["left_out"] = sum(1 for request in logs.requests if request["feedback"]) - len(rated)
    if kind == "preference":
        records, counts["unpaired"] = preference_records(rated)
        format_name = "preference"
    elif kind == "kto":
        records = [
            {"prompt": r["input"], "completion": r["output"], "label": is_liked(r["feedback"]["rating"])} for r in rated
        ]
        format_name = "unpaired"
    else:
        records, format_name = instruction_records(rated, logdir)
        counts["not_liked"] = len(rated) - len(records)
    if not records:
        why = "no input has both a liked and a not-liked answer" if kind == "preference" else "no liked answers"
        raise UserError(f"{logdir}: {len(rated)} rated answers but {why}, so no {kind} records")
    fmt = resolve_format(format_name)
    fields = ["messages"] if format_name == "chat" else fmt.text_fields()  # chat's alternative: conversations
    required = ["messages"] if format_name == "chat" else fmt.required_fields()
    quality = QualityReport()
    kept = clean(
        list(enumerate(records, start=1)),
        fields,
        RULES,
        quality,
        source=str(path),
        key_fields=fmt.key_fields(),
        required=required,
        keep_ends=fmt.joined_fields(),
    )
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for _, record in kept)
    write_atomically(path, lambda f: f.write(lines), "w")
    counts |= {"records": len(records), "dropped": quality.dropped, "pii": quality.pii, "written": len(kept)}
    counts["format"] = format_name
    print_counts(counts, kind, path)
    return counts


def print_counts(counts: dict, kind: str, path: Path) -> None:
    left_out = f" ({counts['left_out']} more rated: errors, classify or another endpoint)" if counts["left_out"] else ""
    print(f"{counts['requests']} requests, {counts['rated']} rated answers{left_out}")
    if kind == "preference":
        print(f"{counts['records']} pairs; {counts['unpaired']} rated answers had no oppositely rated answer to pair")
    elif kind == "instruction":
        print(f"{counts['records']} liked answers; {counts['not_liked']} not liked, left out")
    dropped = ", ".join(f"{rule} {n}" for rule, n in counts["dropped"].items() if n) or "none"
    print(f"dropped by the quality rules: {dropped}")
    if counts["pii"]:
        print("PII replaced: " + ", ".join(f"{kind} {n}" for kind, n in counts["pii"].items()))
    print(
        f"wrote {counts['written']} {counts['format']} records to {path} (train with --data.format {counts['format']})"
    )
