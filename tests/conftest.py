"""Shared fixtures: a tiny Llama (2 layers, hidden 64) with a tokenizer trained on the test data, and data files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Tokenized datasets are cached per test session, not in the user's ~/.cache (read when lightning_ft is imported).
os.environ["LIGHTNING_FT_CACHE"] = tempfile.mkdtemp(prefix="lightning-ft-cache-")
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from tiny_model import WORDS, build_tiny_llama

from lightning_ft.commands import main

LABELS = ["neg", "pos"]


def run_in_processes(*args) -> None:
    """Run `python ARGS...` (a tests/scripts file or `-m lightning_ft ...`): Lightning's DDP launcher needs a
    script it can start again once per process, so multi-process tests leave pytest's process."""
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-3000:]}"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def instruction_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        rows.append({"instruction": "Reverse the words.", "input": " ".join(words), "output": " ".join(words[::-1])})
    return rows


def preference_rows(n: int, seed: int) -> list[dict]:
    """A prompt to reverse three words; chosen: reversed, rejected: another order of them."""
    rng = random.Random(seed)
    rows = {}
    while len(rows) < n:  # distinct prompts: no pair is a duplicate the quality rules would drop
        words = rng.sample(WORDS, 3)
        wrong = [words[1], words[0], words[2]] if rng.random() < 0.5 else [words[0], words[2], words[1]]
        prompt = f"Reverse the words: {' '.join(words)}\nAnswer:"
        rows[prompt] = {"prompt": prompt, "chosen": " " + " ".join(words[::-1]), "rejected": " " + " ".join(wrong)}
    return list(rows.values())


def feedback_rows(pairs: list[dict]) -> list[dict]:
    """KTO's unpaired feedback: each pair as its chosen completion (desirable) and its rejected one (not)."""
    return [
        {"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}
        for pair in pairs
        for side in ("chosen", "rejected")
    ]


def classification_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        mood = "good great nice" if label == "pos" else "bad awful poor"
        rows.append({"text": f"{mood} {rng.choice(WORDS)}", "label": label})
    return rows


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "train.jsonl", instruction_rows(32, seed=0))
    write_jsonl(root / "val.jsonl", instruction_rows(8, seed=1))
    write_jsonl(root / "cls_train.jsonl", classification_rows(32, seed=2))
    write_jsonl(root / "cls_val.jsonl", classification_rows(8, seed=3))
    write_jsonl(root / "pref_train.jsonl", preference_rows(32, seed=4))
    write_jsonl(root / "pref_val.jsonl", preference_rows(8, seed=5))
    write_jsonl(root / "feedback_train.jsonl", feedback_rows(preference_rows(16, seed=6)))
    write_jsonl(root / "feedback_val.jsonl", feedback_rows(preference_rows(4, seed=7)))
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, data_dir) -> Path:
    texts = [
        v
        for name in ("train.jsonl", "cls_train.jsonl")
        for line in (data_dir / name).read_text().splitlines()
        for v in json.loads(line).values()
    ]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", texts, hidden=64, layers=2, vocab_size=300)


@pytest.fixture
def fit_args(tiny_model, data_dir, tmp_path):
    """Contract flags for a short instruction fit of the tiny model into a fresh run dir."""

    def make(*extra: str, run_dir: Path | None = None, classification: bool = False) -> list[str]:
        train, val = ("cls_train.jsonl", "cls_val.jsonl") if classification else ("train.jsonl", "val.jsonl")
        args = [
            "fit",
            "--model.model_name_or_path",
            str(tiny_model),
            "--data.train_path",
            str(data_dir / train),
            "--data.val_path",
            str(data_dir / val),
            "--trainer.default_root_dir",
            str(run_dir or tmp_path / "run"),
            "--trainer.max_steps",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.logger",
            "false",
        ]
        if classification:
            args += [
                "--model.task",
                "sequence_classification",
                "--data.format",
                "classification",
                "--model.labels",
                json.dumps(LABELS),
            ]
        return args + list(extra)

    return make


@pytest.fixture
def cli():
    """Run `lightning-ft` in this process; returns the exit status."""
    return main
