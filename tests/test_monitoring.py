"""Serving logs read offline: the per-version report and A/B verdict, input drift, and feedback as training data."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS, write_jsonl
from transformers import AutoTokenizer

from lightning_ft.data.module import FineTuneDataModule
from lightning_ft.serving.drift import DriftMonitor, build_profile, input_token_ids, psi, save_profile
from lightning_ft.serving.logs import read_logs
from lightning_ft.serving.report import ab_test, by_version

PNG = b"\x89PNG\r\n\x1a\n"


def request(rid: str, version: str, rng: random.Random, **fields) -> dict:
    row = {
        "id": rid,
        "time": "2026-12-04T19:00:00.123+00:00",
        "endpoint": "completions",
        "version": version,
        "user": "alice",
        "status": 200,
        "error": None,
        "latency_s": round(rng.lognormvariate(-2, 0.5), 4),
        "ttft_s": round(rng.uniform(0.01, 0.05), 4),
        "prompt_tokens": 12,
        "completion_tokens": rng.randint(1, 30),
        "confidence": -rng.random(),
        "finish_reason": "stop",
        "stream": False,
        "input": f"Reverse the words: {' '.join(rng.sample(WORDS, 3))}\nAnswer:",
        "output": " cat dog",
    }
    return row | fields


def traffic(version: str, n: int, liked: int, rng: random.Random, errors: int = 0) -> tuple[list[dict], list[dict]]:
    """n answered requests of a version, the first `liked` of them thumbs up and the rest thumbs down, then errors."""
    rows = [request(f"{version}-{i}", version, rng) for i in range(n)]
    rows += [
        request(f"{version}-e{i}", version, rng, status=500, error="CUDA out of memory", output=None, ttft_s=None)
        for i in range(errors)
    ]
    votes = [
        {"time": "t", "response_id": row["id"], "rating": i < liked, "user": None} for i, row in enumerate(rows[:n])
    ]
    return rows, votes


def write_logs(logdir: Path, requests: list[dict], feedback: list[dict], rotate_at: int = 0) -> Path:
    """The logs as RotatingFileHandler leaves them: the oldest `rotate_at` requests in requests.jsonl.1."""
    logdir.mkdir(parents=True, exist_ok=True)
    if rotate_at:
        write_jsonl(logdir / "requests.jsonl.1", requests[:rotate_at])
    write_jsonl(logdir / "requests.jsonl", requests[rotate_at:])
    write_jsonl(logdir / "feedback.jsonl", feedback)
    return logdir


def test_report_table_plots_and_ab_verdict(tmp_path, cli, capsys):
    rng = random.Random(0)
    v1, votes1 = traffic("v1", 100, liked=40, rng=rng, errors=10)
    v2, votes2 = traffic("v2", 100, liked=80, rng=rng, errors=0)
    logdir = write_logs(tmp_path / "logs", v1 + v2, votes1 + votes2, rotate_at=60)
    assert cli(["monitor", "report", str(logdir), "--output", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {row["version"]: row for row in report["versions"]}
    assert report["requests"] == 210 and list(rows) == ["v1", "v2"]  # the rotated file read too, oldest first
    for version, logged in (("v1", v1), ("v2", v2)):
        answered = [r for r in logged if r["status"] == 200]
        expected = np.percentile([r["latency_s"] for r in answered], [50, 95, 99])
        assert [rows[version][f"latency_p{q}"] for q in (50, 95, 99)] == pytest.approx(expected)
        expected_ttft = np.percentile([r["ttft_s"] for r in answered], [50, 95, 99])
        assert [rows[version][f"ttft_p{q}"] for q in (50, 95, 99)] == pytest.approx(expected_ttft)
        tokens_per_s = sum(r["completion_tokens"] for r in answered) / sum(r["latency_s"] for r in answered)
        assert rows[version]["tokens_per_s"] == pytest.approx(tokens_per_s)
    assert rows["v1"]["error_rate"] == pytest.approx(10 / 110) and rows["v2"]["error_rate"] == 0
    assert rows["v1"]["win_rate"] == pytest.approx(0.4) and rows["v2"]["win_rate"] == pytest.approx(0.8)
    assert rows["v1"]["rated"] == 100 and rows["v2"]["score"] == pytest.approx(0.8)
    ab = report["ab"]
    assert ab["verdict"] == "v2 better" and ab["p_value"] < 1e-6
    assert ab["ci"][0] < 0.4 < ab["ci"][1] and ab["ci"][0] > 0  # the true difference inside, zero outside
    assert "A/B v2 vs v1: v2 better" in printed and "latency v2 vs v1" in printed
    for plot in ("latency.png", "feedback.png"):
        assert (tmp_path / "report" / plot).read_bytes().startswith(PNG)


def test_ab_verdict_sees_no_difference_in_equal_rates(tmp_path, cli, capsys):
    rng = random.Random(1)
    v1, votes1 = traffic("v1", 100, liked=60, rng=rng)
    v2, votes2 = traffic("v2", 100, liked=60, rng=rng)
    logdir = write_logs(tmp_path / "logs", v1 + v2, votes1 + votes2)
    groups = by_version(read_logs(logdir).requests)
    ab = ab_test(groups, "v1", "v2")
    assert ab["verdict"] == "no significant difference" and ab["p_value"] == pytest.approx(1.0)
    assert ab["ci"][0] < 0 < ab["ci"][1]
    assert ab["latency"]["verdict"] == "no significant difference"  # same latency distribution
    # named versions set which one is the candidate
    better, votes = traffic("v3", 100, liked=90, rng=rng)
    write_logs(logdir, v1 + v2 + better, votes1 + votes2 + votes)
    assert cli(["monitor", "report", str(logdir), "--versions", "v3,v1"]) == 0
    assert "A/B v1 vs v3: v1 worse" in capsys.readouterr().out
    assert cli(["monitor", "report", str(logdir), "--versions", "v1,v9"]) == 2
    assert "no requests of version 'v9' (logged: v1, v2, v3)" in capsys.readouterr().err


def test_malformed_log_line_names_file_and_line(tmp_path, cli, capsys):
    rng = random.Random(2)
    rows, votes = traffic("v1", 5, liked=2, rng=rng)
    logdir = write_logs(tmp_path / "logs", rows, votes, rotate_at=3)
    with (logdir / "requests.jsonl.1").open("a") as f:
        f.write('{"id": "broken", "version": \n')
    assert cli(["monitor", "report", str(logdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{logdir / 'requests.jsonl.1'}:4: invalid JSON" in err
    (logdir / "requests.jsonl.1").unlink()
    write_logs(logdir, rows, votes[:1] + [{"response_id": "v1-1", "rating": 7}])
    assert cli(["data", "from-feedback", str(logdir), "--format", "kto", "--output", str(tmp_path / "o.jsonl")]) == 2
    assert f"{logdir / 'feedback.jsonl'}:2: field 'rating' must be 1-5 or true/false, got 7" in capsys.readouterr().err
    assert cli(["monitor", "report", str(tmp_path / "nowhere")]) == 2


# ------------------------------------------------------------------------------------------------------ drift


def test_psi_equals_a_hand_computation():
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    # an empty bin is floored at 1e-4
    assert psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(-0.5 * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4))
    # tokens 1, 2 are the top 2 (a third each), token 3 goes to "other"; labels half a, half b
    profile = build_profile([2, 2, 4, 4], [[1, 2], [1, 2], [1, 2, 3, 3], [1, 2, 3, 3]], ["a", "b", "a", "b"], top_k=2)
    assert profile["token_ids"] == [1, 2] and profile["token_other_share"] == pytest.approx(1 / 3)
    monitor = DriftMonitor(json.loads(json.dumps(profile)))  # as read back from drift_profile.json
    monitor.observe([1, 1, 1, 3], label="a")
    scores = monitor.scores()
    third = 1 / 3
    tokens = (0.75 - third) * math.log(0.75 / third) + (1e-4 - third) * math.log(1e-4 / third)
    tokens += (0.25 - third) * math.log(0.25 / third)
    assert scores["token_psi"] == pytest.approx(tokens)
    labels = 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)  # the <other> bin: floor on both sides, 0
    assert scores["label_psi"] == pytest.approx(labels)


def inputs(rng: np.random.Generator, n: int, mean_length: float, vocabulary: range) -> list[list[int]]:
    """Token id lists: Poisson lengths, Zipf-like token frequencies over `vocabulary`."""
    weights = 1 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    return [list(rng.choice(vocabulary, size=max(1, rng.poisson(mean_length)), p=weights)) for _ in range(n)]


def test_drift_alerts_on_another_distribution_only():
    rng = np.random.default_rng(0)
    training = inputs(rng, 2000, 20, range(500))
    profile = build_profile([len(ids) for ids in training], training, top_k=200)
    assert len(profile["length_sample"]) == 2000 and len(profile["token_ids"]) == 200
    same, other = DriftMonitor(profile, window=200), DriftMonitor(profile, window=200)
    for ids in inputs(rng, 500, 20, range(500)):  # more than the window: only the last 200 count
        same.observe(ids)
    for ids in inputs(rng, 200, 45, range(300, 800)):
        other.observe(ids)
    assert len(same) == 200 and same.alerts() == []
    assert same.scores()["length_psi"] < 0.1 and same.scores()["token_psi"] < 0.1
    alerts = other.alerts()
    assert {line.split()[0] for line in alerts} == {"length_psi", "length_ks_p", "token_psi"}
    assert all(line.split()[2] in "<>" for line in alerts)
    assert same.alerts(0.0) != []  # a number sets every PSI threshold


def test_monitor_drift_command(tmp_path, cli, capsys, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    export = tmp_path / "export"
    tokenizer.save_pretrained(export)
    rng = random.Random(3)

    def words(n: int, pool) -> str:
        return " ".join(rng.choice(pool) for _ in range(n))

    training = [words(rng.randint(3, 8), WORDS) for _ in range(500)]
    ids = [input_token_ids(tokenizer, text) for text in training]
    save_profile(export, build_profile([len(i) for i in ids], ids))
    same = [request(f"a{i}", "v1", rng, input=words(rng.randint(3, 8), WORDS)) for i in range(150)]
    chat = [request(f"c{i}", "v1", rng, endpoint="chat.completions", input=[{"role": "user", "content": words(5, WORDS)}])
            for i in range(50)]  # fmt: skip
    shifted = [request(f"b{i}", "v2", rng, input=words(40, ["zebra", "quantum", "7", "Ω"])) for i in range(200)]
    logdir = write_logs(tmp_path / "logs", same + chat + shifted, [])
    assert cli(["monitor", "drift", str(logdir), "--model", str(export)]) == 0
    printed = capsys.readouterr().out
    assert "alert: v2: token_psi" in printed and "alert: v2: length_psi" in printed and "alert: v1" not in printed
    assert cli(["monitor", "drift", str(logdir), "--model", str(tmp_path)]) == 2
    assert "no drift_profile.json" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- from-feedback


def feedback_logs(logdir: Path) -> Path:
    """Seven prompts; six with a liked (5 of 5) and a disliked (thumbs down) answer, the first also liked again
    with the same answer, the seventh liked only; plus an unrated, an errored and a classify request."""
    rng = random.Random(4)
    rows, votes = [], []

    def add(prompt: str, answer: str | None, rating, **fields) -> None:
        rid = f"r{len(rows)}"
        rows.append(request(rid, "v1", rng, input=prompt, output=answer, **fields))
        if rating is not None:
            votes.append({"time": "t", "response_id": rid, "rating": rating, "user": None, "comment": None})

    for i in range(7):
        words = [WORDS[i], WORDS[i + 1], WORDS[i + 2]]
        prompt = f"Reverse the words: {' '.join(words)}\nAnswer:"
        add(prompt, " " + " ".join(words[::-1]) + (" or mail bob@example.com" if i == 2 else ""), 5)
        if i < 6:
            add(prompt, " " + " ".join(words), False)
        if i == 0:
            add(prompt, " " + " ".join(words[::-1]), 2)  # changed their mind: the latest rating counts
            votes.append(votes[-1] | {"rating": 4})
    add("Reverse the words: cat dog\nAnswer:", " dog cat", None)
    add("Reverse the words: dog cat\nAnswer:", None, True, status=500, error="timeout")
    add("cat dog", {"pos": 0.9, "neg": 0.1}, True, endpoint="classify")
    return write_logs(logdir, rows, votes)


@pytest.mark.parametrize(
    "kind,data_format,expected",
    [
        # 7 pairs (prompt 1 twice: its two liked answers are one text), one a duplicate; prompt 7 unpaired
        (
            "preference",
            "preference",
            ["14 rated answers (2 more rated: errors, classify", "7 pairs; 1 rated answers had no", "exact_dedup 1"],
        ),
        ("kto", "unpaired", ["14 rated answers", "exact_dedup 1"]),
        ("instruction", "instruction", ["8 liked answers; 6 not liked", "exact_dedup 1"]),
    ],
)
def test_from_feedback_writes_loadable_data(tmp_path, cli, capsys, tiny_model, kind, data_format, expected):
    logdir = feedback_logs(tmp_path / "logs")
    out = tmp_path / f"{kind}.jsonl"
    assert cli(["data", "from-feedback", str(logdir), "--format", kind, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    written = {"preference": 6, "kto": 13, "instruction": 7}[kind]
    assert len(records) == written
    for line in (*expected, "PII replaced: EMAIL 1", f"wrote {written} {data_format} records"):
        assert line in printed
    assert "bob@example.com" not in out.read_text() and "<EMAIL>" in out.read_text()
    if kind == "kto":
        assert sum(record["label"] for record in records) == 7
    if kind == "preference":
        first = records[0]
        assert first["prompt"].startswith("Reverse the words: red blue green")
        assert (first["chosen"], first["rejected"]) == (" green blue red", " red blue green")
    data = FineTuneDataModule(data_format, str(out), tokenizer=str(tiny_model), max_length=512)
    data.setup("fit")
    assert data.report["train"]["examples"] == written


def test_from_feedback_instruction_from_chat_and_mixed_endpoints(tmp_path, cli, capsys, tiny_model):
    logdir = feedback_logs(tmp_path / "logs")
    rng = random.Random(5)
    rows = [json.loads(line) for line in (logdir / "requests.jsonl").read_text().splitlines()]
    votes = [json.loads(line) for line in (logdir / "feedback.jsonl").read_text().splitlines()]
    for i in range(4):
        turns = [{"role": "user", "content": f"Name an animal like the {WORDS[8 + i]}."}]
        rows.append(request(f"chat{i}", "v2", rng, endpoint="chat.completions", input=turns, output=WORDS[9 + i]))
        votes.append({"time": "t", "response_id": f"chat{i}", "rating": i != 3, "user": "bob", "comment": None})
    write_logs(logdir, rows, votes)
    out = tmp_path / "chat.jsonl"
    base = ["data", "from-feedback", str(logdir), "--format", "instruction", "--output", str(out)]
    assert cli(base) == 2
    err = capsys.readouterr().err
    assert "both chat.completions (3) and completions (8)" in err and "--endpoint chat.completions" in err
    assert cli([*base, "--endpoint", "chat.completions"]) == 0
    assert "wrote 3 chat records" in capsys.readouterr().out
    first = json.loads(out.read_text().splitlines()[0])
    assert first["messages"][-1] == {"role": "assistant", "content": WORDS[9]}
    data = FineTuneDataModule("chat", str(out), tokenizer=str(tiny_model), max_length=512)
    data.setup("fit")
    assert data.report["train"]["examples"] == 3
    assert cli([*base[:3], "--format", "sft", "--output", str(out)]) == 2
    assert "--format: choose preference, kto or instruction" in capsys.readouterr().err
