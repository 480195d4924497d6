"""The throughput benchmark measures what it claims: every contender trains the same examples, and only their
real tokens count (padding excluded), whatever the batching (padded to max_length, dynamic, packed, full rows)."""

from __future__ import annotations

import json
import math

import pytest
from bench_throughput import build_parser, prepare
from throughput_contenders import CONTENDERS, run
from tiny_model import WORDS

from lightning_ft.data.batching import rows_per_batch
from lightning_ft.precision import c_compiler


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """14 instruction records of varied lengths, a 2-layer Llama, batch 4, max_length 96."""
    tmp = tmp_path_factory.mktemp("bench")
    records = [
        {
            "instruction": f"List {i} words.",
            "input": "",
            "output": " ".join(WORDS[j % len(WORDS)] for j in range(3 + 6 * i)),
        }
        for i in range(14)
    ]
    (tmp / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    args = build_parser().parse_args(
        [f"--data={tmp / 'records.jsonl'}", "--records=13", "--hidden=64", "--layers=2", "--heads=4", "--vocab=1000",
         "--max_length=96", "--batch_size=4"]
    )  # fmt: skip
    workdir = tmp / "work"
    workdir.mkdir()
    return prepare(args, workdir)


def test_every_contender_trains_the_same_real_tokens(workload):
    examples = workload.examples()
    assert len(examples) == 13
    real = sum(len(e["input_ids"]) for e in examples)
    assert max(len(e["input_ids"]) for e in examples) == workload.max_length  # the longest was cut to max_length
    names = [name for name in CONTENDERS if name not in ("ceiling", "lightning_ft_compiled")]  # each tested below
    results = {name: run(name, workload.workdir) for name in names}
    for name, result in results.items():
        assert result["tokens"] == real, name
        assert math.isfinite(result["final_loss"]), name
    # Padded to max_length, (a) feeds 4 batches x 4 rows x 96 ids, far more than the real tokens it is credited with.
    assert results["hf_recipe"]["forwards"] == 4 and real < 4 * 4 * workload.max_length
    # batch_size counts examples however they are laid out: packed, as many steps as padded
    assert results["lightning_ft"]["forwards"] == 4


@pytest.mark.skipif(c_compiler() is None, reason="torch.compile on CPU needs a C++ compiler (none on this machine)")
def test_compiled_blocks_train_like_uncompiled(workload):
    """`--model.compile true` (the lightning_ft_compiled contender): the same tokens, the same trained model."""
    plain, compiled = run("lightning_ft", workload.workdir), run("lightning_ft_compiled", workload.workdir)
    assert compiled["tokens"] == plain["tokens"] and compiled["forwards"] == plain["forwards"]
    assert compiled["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-3)


def test_the_ceiling_trains_full_rows_of_the_same_tokens(workload):
    real = sum(len(e["input_ids"]) for e in workload.examples())
    result = run("ceiling", workload.workdir)
    rows = real // workload.max_length
    assert result["tokens"] == rows * workload.max_length
    # as many rows a step as hold batch_size examples on average: the contenders' tokens per step
    per_step = rows_per_batch(workload.batch_size, rows, len(workload.examples()))
    assert result["forwards"] == math.ceil(rows / per_step) and per_step < workload.batch_size
