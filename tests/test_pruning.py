"""Magnitude pruning: exact unstructured sparsity; heads and neurons removed (the model computes what the original
computes with them silenced, saves and reloads); the prune command; a fine-tune that keeps the zeros at zero."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from lightning_ft.callbacks import KeepSparsity
from lightning_ft.pruning import head_count_reloads, prune_model, sparsity_report

ROOT = Path(__file__).resolve().parents[1]
INPUT_IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 61], [7, 7, 23, 90, 14, 2, 33]])


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=2
    )
    return BertForSequenceClassification(config).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).logits


def kept_units(original: torch.Tensor, pruned: torch.Tensor, size: int) -> list[int]:
    """Which blocks of `size` rows of `original` are still rows of `pruned` (to tell which heads/neurons went)."""
    now = pruned.view(-1, size, pruned.shape[1])
    return [
        i for i, unit in enumerate(original.view(-1, size, original.shape[1])) if any(torch.equal(unit, n) for n in now)
    ]


def reloaded(model, folder: Path, loader):
    model.save_pretrained(folder)
    return loader.from_pretrained(folder).eval()


def test_half_unstructured_zeroes_exactly_half_of_every_block_layer_the_smallest_ones(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    original = copy.deepcopy(model)
    prune_model(model, "unstructured", 0.5)
    report = sparsity_report(model)
    assert len(report["layers"]) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 blocks
    for name, layer in report["layers"].items():
        weight, before = model.get_submodule(name).weight, original.get_submodule(name).weight
        assert int((weight == 0).sum()) == layer["zeros"] == weight.numel() // 2 and layer["sparsity"] == 0.5
        assert before[weight == 0].abs().max() <= before[weight != 0].abs().min()  # the smallest magnitudes went
        assert torch.equal(weight[weight != 0], before[weight != 0])
    assert report["sparsity"] == 0.5 and report["parameters"] == sum(p.numel() for p in original.parameters())
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # outside the blocks: untouched
        assert torch.equal(model.get_parameter(name), original.get_parameter(name))


def test_head_pruning_removes_the_weakest_kv_group_and_the_model_reloads_with_plain_transformers(tiny_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    original = copy.deepcopy(model)
    prune_model(model, "heads", 0.5)  # 4 query heads sharing 2 kv heads: one kv head and its 2 query heads go
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 16)
    silenced = copy.deepcopy(original)
    for layer, before, after in zip(silenced.model.layers, original.model.layers, model.model.layers, strict=True):
        assert after.self_attn.q_proj.weight.shape == (32, 64) and after.self_attn.o_proj.weight.shape == (64, 32)
        assert after.self_attn.k_proj.weight.shape == after.self_attn.v_proj.weight.shape == (16, 64)
        (kept,) = kept_units(before.self_attn.k_proj.weight, after.self_attn.k_proj.weight, 16)
        norms = [
            sum(
                w.pow(2).sum()
                for w in (
                    before.self_attn.q_proj.weight[32 * g : 32 * g + 32],
                    before.self_attn.k_proj.weight[16 * g : 16 * g + 16],
                    before.self_attn.v_proj.weight[16 * g : 16 * g + 16],
                    before.self_attn.o_proj.weight[:, 32 * g : 32 * g + 32],
                )
            )
            for g in range(2)
        ]
        assert norms[kept] > norms[1 - kept]
        with torch.no_grad():  # a kv head whose values are zero contributes nothing through its query heads
            layer.self_attn.v_proj.weight[16 * (1 - kept) : 16 * (2 - kept)] = 0
    torch.testing.assert_close(logits(model), logits(silenced))
    assert not torch.allclose(logits(model), logits(original))
    again = reloaded(model, tmp_path / "heads", AutoModelForCausalLM)
    assert again.config.num_attention_heads == 2
    torch.testing.assert_close(logits(again), logits(model), rtol=0, atol=0)


def test_bert_head_pruning_removes_heads_in_memory_but_could_not_reload():
    model, original = tiny_bert(), tiny_bert()
    prune_model(model, "heads", 0.5)  # 2 of 4 heads of size 8
    silenced = tiny_bert()
    for layer, before, after in zip(silenced.bert.encoder.layer, original.bert.encoder.layer, model.bert.encoder.layer):
        attention = after.attention
        assert attention.self.query.weight.shape == (16, 32) and attention.output.dense.weight.shape == (32, 16)
        kept = kept_units(before.attention.self.query.weight, attention.self.query.weight, 8)
        assert len(kept) == 2
        with torch.no_grad():
            for head in set(range(4)) - set(kept):
                layer.attention.self.value.weight[8 * head : 8 * head + 8] = 0
                layer.attention.self.value.bias[8 * head : 8 * head + 8] = 0
    torch.testing.assert_close(logits(model), logits(silenced))
    assert not head_count_reloads(model)  # transformers 5's BERT takes the head size from hidden_size / heads


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_neuron_pruning_removes_the_weakest_neurons_and_the_model_reloads(family, tiny_model, tmp_path):
    if family == "llama":
        loader, model = AutoModelForCausalLM, AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        mlps = lambda m: [(layer.mlp.up_proj, layer.mlp.down_proj) for layer in m.model.layers]
    else:
        loader, model = AutoModelForSequenceClassification, tiny_bert()
        mlps = lambda m: [(layer.intermediate.dense, layer.output.dense) for layer in m.bert.encoder.layer]
    original, silenced = copy.deepcopy(model), copy.deepcopy(model)
    size = model.config.intermediate_size
    prune_model(model, "neurons", 0.25)
    assert model.config.intermediate_size == size - size // 4
    for (up, down), (up_before, _), (_, down_silenced) in zip(mlps(model), mlps(original), mlps(silenced)):
        assert up.weight.shape[0] == down.weight.shape[1] == size - size // 4
        kept = kept_units(up_before.weight, up.weight, 1)
        with torch.no_grad():  # a neuron whose output column is zero contributes nothing
            down_silenced.weight[:, sorted(set(range(size)) - set(kept))] = 0
    torch.testing.assert_close(logits(model), logits(silenced))
    again = reloaded(model, tmp_path / family, loader)
    torch.testing.assert_close(logits(again), logits(model), rtol=0, atol=0)


def test_keep_sparsity_keeps_pruned_zeros_but_lets_a_zero_initialised_layer_train():
    pruned, zero_start = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    torch.nn.utils.prune.random_unstructured(pruned, "weight", amount=0.5)
    torch.nn.utils.prune.remove(pruned, "weight")
    torch.nn.init.zeros_(zero_start.weight)  # as LoRA's B starts
    model = torch.nn.Sequential(pruned, zero_start)
    mask = pruned.weight == 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    keep = KeepSparsity()
    keep.on_fit_start(SimpleNamespace(optimizers=[optimizer]), model)
    for _ in range(2):
        model(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()
    assert (pruned.weight[mask] == 0).all() and (pruned.weight[~mask] != 0).all()
    assert (zero_start.weight != 0).all()


def test_prune_then_fine_tune_keeps_the_zeros_while_the_loss_falls(cli, fit_args, tmp_path, capsys):
    pruned = tmp_path / "pruned"
    args = [*fit_args("--data.max_length", "256")[1:], "--kind", "unstructured", "--amount", "0.5"]
    assert cli(["prune", *args, "--output", str(pruned)]) == 0
    out = capsys.readouterr().out
    assert "val_perplexity" in out and "50.00%" in out
    report = json.loads((pruned / "prune_report.json").read_text())
    before, after = report["before"], report["after"]
    assert before["sparsity"] == 0 and after["sparsity"] == 0.5 and before["parameters"] == after["parameters"]
    assert set(before["metrics"]) == set(after["metrics"]) == {"val_loss", "val_perplexity"}
    assert after["metrics"]["val_loss"] != before["metrics"]["val_loss"]
    model = AutoModelForCausalLM.from_pretrained(pruned)
    zeros = {name: layer.weight == 0 for name, layer in model.named_modules() if name.endswith("_proj")}
    assert all(mask.float().mean() == 0.5 for mask in zeros.values())
    assert not (tmp_path / "run").exists()  # prune leaves the run dir alone

    run = tmp_path / "finetune"
    # 4 steps of 8 examples: one epoch of the 32, validated at its end
    flags = ["--model.model_name_or_path", str(pruned), "--trainer.max_steps", "4", "--model.optim.lr", "3e-3"]
    flags += ["--trainer.accumulate_grad_batches", "1", "--trainer.precision", "32-true", "--data.batch_size", "8"]
    flags += ["--data.max_length", "256", "--trainer.num_sanity_val_steps", "0"]
    args = ["fit", "--config", str(ROOT / "configs/prune_finetune.yaml"), *fit_args(*flags, run_dir=run)[1:]]
    assert cli(args) == 0
    selection = json.loads((run / "checkpoints/selection.json").read_text())
    assert selection["best_model_score"] < after["metrics"]["val_loss"]
    trained = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for name, mask in zeros.items():
        weight = trained[f"model.{name}.weight"]
        assert (weight[mask] == 0).all() and (weight[~mask] != model.get_submodule(name).weight[~mask]).any()

    # the fine-tuned checkpoint prunes too (--ckpt): its weights, zeros kept, are what is measured before pruning
    again = tmp_path / "pruned_again"
    ckpt = ["--ckpt", str(run / "checkpoints/last.ckpt"), "--output", str(again)]
    assert cli(["prune", *fit_args("--data.max_length", "256")[1:], *ckpt, "--kind", "neurons", "--amount", "0.5"]) == 0
    report = json.loads((again / "prune_report.json").read_text())
    assert report["before"]["sparsity"] == 0.5 and report["after"]["parameters"] < report["before"]["parameters"]
    assert report["before"]["metrics"]["val_loss"] < after["metrics"]["val_loss"]


def test_prune_command_on_a_classifier_and_its_refusals(cli, fit_args, tiny_model, tmp_path, capsys):
    bert = tmp_path / "bert"
    tiny_bert().save_pretrained(bert)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(bert)
    args = [*fit_args(classification=True)[1:], "--model.model_name_or_path", str(bert)]
    assert cli(["prune", *args, "--kind", "neurons", "--amount", "0.5", "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out/prune_report.json").read_text())
    assert {"val_loss", "val_accuracy", "val_f1_macro"} <= set(report["after"]["metrics"])
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").config.intermediate_size == 32
    capsys.readouterr()

    refusals = {
        ("--kind", "heads", "--amount", "0.5", "--output", str(tmp_path / "heads")): "--kind heads: in transformers 5",
        ("--kind", "neurons", "--amount", "0.5", "--output", str(tmp_path / "out")): "is not an empty folder",
        ("--kind", "neurons", "--amount", "1.5", "--output", str(tmp_path / "x")): "--amount 1.5: the fraction",
        (
            "--kind",
            "neurons",
            "--amount",
            "half",
            "--output",
            str(tmp_path / "x"),
        ): "--amount: expected a number, got 'half'",
        (
            "--kind",
            "channels",
            "--amount",
            "0.5",
            "--output",
            str(tmp_path / "x"),
        ): "--kind: 'channels' is not one of unstructured, heads, neurons",
        (
            "--kind",
            "neurons",
            "--amount",
            "0.001",
            "--output",
            str(tmp_path / "x"),
        ): "--amount 0.001 removes 0 of the 64",
    }
    for flags, message in refusals.items():
        assert cli(["prune", *args, *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "heads").exists() and not (tmp_path / "x").exists()
