"""`lightning-ft bench-inference`: percentiles on a known list, every setting measured on the tiny model with the
token counts a user would check, int8 really swapping the Linear layers, and one-line errors."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_ft.commands.bench_inference import main
from lightning_ft.errors import UserError
from lightning_ft.evaluation.inference import latency_summary, measure, quantize_int8, random_prompts
from lightning_ft.prompts import left_padded
from lightning_ft.trained import load_causal_lm


def test_latency_summary_on_a_known_list():
    # sorted: 0.1 0.2 0.4 0.8 1.6; linear rank q/100 * 4: p50 -> 2 (0.4), p95 -> 3.8, p99 -> 3.96, between 0.8 and 1.6
    summary = latency_summary([1.6, 0.1, 0.8, 0.2, 0.4])
    assert summary == pytest.approx({
        "p50": 0.4,
        "p95": 0.8 + 0.8 * 0.8,
        "p99": 0.8 + 0.96 * 0.8,
        "mean": 3.1 / 5,
        "min": 0.1,
        "max": 1.6,
    })  # fmt: skip
    assert latency_summary([2.0]) == {"p50": 2.0, "p95": 2.0, "p99": 2.0, "mean": 2.0, "min": 2.0, "max": 2.0}


def test_command_measures_every_setting(cli, tiny_model, tmp_path, capsys):
    out = tmp_path / "bench" / "inference.json"
    argv = ["--model", str(tiny_model), "--batch_sizes", "1,2", "--new_tokens", "4", "--requests", "2", "--warmup", "1"]
    assert cli(["bench-inference", *argv, "--output", str(out)]) == 0
    assert "KV-cache speed-up" in capsys.readouterr().out
    report = json.loads(out.read_text())
    results = {(r["batch_size"], r["use_cache"]): r for r in report["results"]}
    assert sorted(results) == [(1, False), (1, True), (2, False), (2, True)]
    for (batch_size, _), result in results.items():
        assert result["new_tokens_per_row"] == [4, 4]
        assert result["generated_tokens"] == 2 * batch_size * 4
        latencies = result["latencies_s"]
        assert len(latencies) == 2 and min(latencies) > 0
        assert result["latency_s"]["p50"] == pytest.approx(np.median(latencies))
        assert result["tokens_per_s"] == pytest.approx(result["generated_tokens"] / sum(latencies))
        assert 0 < result["first_token_s"]["max"] <= max(latencies)
    for size in (1, 2):
        ratio = results[size, False]["latency_s"]["p50"] / results[size, True]["latency_s"]["p50"]
        assert report["kv_cache_speedup"][str(size)] == pytest.approx(ratio)
    config = report["config"]
    assert (config["quantize"], config["quantized_linear_layers"], config["prompt_tokens_mean"]) == ("none", 0, 32)
    assert config["torch_version"] == torch.__version__ and config["threads"] >= 1


def test_int8_swaps_every_linear_layer_and_still_generates(tiny_model):
    model, _ = load_causal_lm(str(tiny_model), "float32")
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        before = model(ids).logits
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert linear == 2 * 7 + 1  # q k v o gate up down per layer, and the LM head
    assert quantize_int8(model) == linear
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules()) == linear
    with torch.no_grad():
        after = model(ids).logits
    assert not torch.equal(before, after)  # int8 arithmetic really runs ...
    assert np.corrcoef(before.flatten(), after.flatten())[0, 1] > 0.99  # ... on the same model
    assert model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, 8)


def test_int8_command_with_prompts_of_unequal_length(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red cat\n\nblue dog sees a green owl and a gold bee\n")
    out = tmp_path / "int8.json"
    main(["--model", str(tiny_model), "--batch_sizes", "2", "--new_tokens", "3", "--requests", "1", "--warmup", "0"]
         + ["--prompts", str(prompts), "--quantize", "int8", "--output", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["config"]["quantized_linear_layers"] == 15
    assert report["config"]["prompt_tokens_mean"] > 2  # the two lines, left-padded to the longer one
    assert [r["generated_tokens"] for r in report["results"]] == [6, 6]


def test_exactly_new_tokens_even_when_the_model_would_stop(tiny_model):
    """The model's first greedy token made its EOS: without min_new_tokens every row would end after one token."""
    model, tokenizer = load_causal_lm(str(tiny_model), "float32")
    prompts = random_prompts(tokenizer, rows=2, length=6)
    batch = left_padded(prompts, tokenizer.pad_token_id, "cpu")
    first = model.generate(**batch, max_new_tokens=1, do_sample=False)[:, -1].tolist()
    stopped = model.generate(**batch, max_new_tokens=4, do_sample=False, eos_token_id=first)
    assert stopped.shape[1] == batch["input_ids"].shape[1] + 1
    assert not any(set(p.tolist()) & set(tokenizer.all_special_ids) for p in prompts)  # random prompts: no specials
    args = SimpleNamespace(new_tokens=4, warmup=0, requests=1)
    results = measure(model, prompts, tokenizer.pad_token_id, first, batch_size=2, bench=args, device="cpu")
    assert [r["new_tokens_per_row"] for r in results] == [[4], [4]]


@pytest.mark.parametrize("as_tensors", [True, False])  # bench-inference's prompts, GenerationMetrics' id lists
def test_left_padding_puts_prompts_at_the_end(as_tensors):
    prompts = [[7, 8, 9], [5]]
    batch = left_padded([torch.tensor(p) for p in prompts] if as_tensors else prompts, pad_id=2, device="cpu")
    assert batch["input_ids"].tolist() == [[7, 8, 9], [2, 2, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch_sizes", "0,x"], "--batch_sizes: expected comma-separated positive integers"),
        (["--batch_sizes", "4,0"], "--batch_sizes: expected comma-separated positive integers"),
        (["--new_tokens", "0"], "--new_tokens must be at least 1"),
        (["--quantize", "int4"], "--quantize: .int4. is not one of none, int8"),
        (["--quantize", "int8", "--dtype", "bfloat16"], "drop --dtype bfloat16"),
        (["--prompts", "no-such-file.txt"], "--prompts: no such file"),
    ],
)
def test_bad_flags_are_one_error_line(cli, capsys, tiny_model, flags, message):
    assert cli(["bench-inference", "--model", str(tiny_model), *flags]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and re.search(f"^error: .*{message}", errors[0]), errors


def test_missing_model_is_a_one_line_error(cli, tmp_path, capsys):
    assert cli(["bench-inference", "--model", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --model:")
    with pytest.raises(UserError, match="is neither a model directory"):
        main(["--model", str(tmp_path)])
