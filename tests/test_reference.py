"""The reference of preference objectives, precomputed once and cached on disk (`reference: precomputed`), and a
run starting from a supervised checkpoint (`init_from`): that model is the start and the reference."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from test_dpo import QUIET
from transformers import AutoModelForCausalLM

from lightning_ft import FineTuneDataModule, FineTuneModule, Full, LoRA
from lightning_ft.errors import UserError
from lightning_ft.objectives import DPO
from lightning_ft.objectives.pairs import pair_logps
from lightning_ft.objectives.precomputed import PrecomputedReference
from lightning_ft.optim import Optim
from lightning_ft.trained import load_causal_lm


def pairs_data(tiny_model, data_dir, cache) -> FineTuneDataModule:
    files = {"train_path": str(data_dir / "pref_train.jsonl"), "val_path": str(data_dir / "pref_val.jsonl")}
    return FineTuneDataModule("preference", **files, tokenizer=str(tiny_model), max_length=64, cache_dir=str(cache))


def train(
    tiny_model, data_dir, cache, method, reference: str, steps: int = 4
) -> tuple[FineTuneModule, dict, FineTuneDataModule]:
    """A fresh run: its own DataModule (a DataModule's stream of batches goes on from run to run)."""
    seed_everything(0)
    data = pairs_data(tiny_model, data_dir, cache)
    module = FineTuneModule(str(tiny_model), method=method, objective=DPO(reference=reference), optim=Optim(lr=1e-2))
    Trainer(max_steps=steps, **QUIET).fit(module, data)
    return module, Trainer(**QUIET).validate(module, data, verbose=False)[0], data


@pytest.mark.parametrize("method", [LoRA(dropout=0.0), Full()], ids=["LoRA", "Full"])
def test_a_precomputed_reference_trains_as_the_live_one_and_is_read_back_from_the_cache(
    tiny_model, data_dir, tmp_path, monkeypatch, method
):
    cache = tmp_path / "cache"
    live, live_metrics, _ = train(tiny_model, data_dir, cache, method, "live")
    precomputed, metrics, data = train(tiny_model, data_dir, cache, method, "precomputed")
    assert metrics == pytest.approx(live_metrics, rel=1e-5, abs=1e-6)
    for (name, mine), theirs in zip(precomputed.model.named_parameters(), live.model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)
    # The tables are the reference's own sums: the base model's, example by example.
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad(), precomputed.method.adapters_off(precomputed.model) or torch.no_grad():
        base = live.objective._reference[0] if isinstance(method, Full) else precomputed.policy
        expected = pair_logps(base.label_logps(batch), batch)
    table = precomputed.precomputed.tables["val"][batch["example_ids"]]
    torch.testing.assert_close(table, torch.stack([expected.chosen, expected.rejected], 1), rtol=1e-6, atol=1e-5)
    if isinstance(method, Full):  # no frozen copy: the policy served as the reference before its first step
        assert precomputed.objective._reference[0].model is precomputed.model

    def no_reference_pass(*args):
        raise AssertionError("the reference ran again")

    monkeypatch.setattr(PrecomputedReference, "compute", no_reference_pass)
    _, again, _ = train(tiny_model, data_dir, cache, method, "precomputed")  # a rerun reads the cache
    assert again == metrics


def test_a_resumed_full_run_whose_precomputed_reference_is_gone_is_one_error(tiny_model, data_dir, tmp_path):
    """Once Full has trained, its weights are no longer the reference: the tables cannot be made again."""
    module, _, _ = train(tiny_model, data_dir, tmp_path / "a", Full(), "precomputed", steps=1)
    fresh_cache = pairs_data(tiny_model, data_dir, tmp_path / "b")
    module.precomputed.tables.clear()
    with pytest.raises(UserError, match=r"the precomputed reference of this data \(val\) is not in .*: start the run"):
        Trainer(**QUIET).validate(module, fresh_cache, ckpt_path=None, verbose=False)


def test_dpo_from_a_lora_sft_checkpoint_starts_from_and_compares_against_the_merged_sft_model(
    cli, fit_args, tiny_model, data_dir, tmp_path, capsys
):
    """SFT -> DPO: `--model.init_from` merges the SFT adapter; DPO trains a new adapter on top, and its reference
    (that adapter off) is the SFT model, not the base."""
    sft = ["--model.method", "LoRA", "--model.optim.lr", "5e-2", "--generation.num_samples", "0"]
    assert cli(fit_args(*sft, "--data.num_workers", "0", run_dir=tmp_path / "sft")) == 0
    checkpoint = tmp_path / "sft" / "checkpoints" / "last.ckpt"
    assert cli(["export", "--ckpt", str(checkpoint), "--merge", "--output", str(tmp_path / "merged")]) == 0

    module = FineTuneModule(str(tiny_model), method=LoRA(dropout=0.0), objective=DPO(), init_from=str(checkpoint))
    module.configure_model()
    data = pairs_data(tiny_model, data_dir, tmp_path / "cache")
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    merged = FineTuneModule(str(tmp_path / "merged"), method=Full())
    merged.configure_model()
    base = FineTuneModule(str(tiny_model), method=Full())
    base.configure_model()
    with torch.no_grad():
        reference = module.objective._reference[0].label_logps(batch)
        sft_model, base_model = merged.policy.label_logps(batch), base.policy.label_logps(batch)
        assert module.loss(batch).loss.item() == pytest.approx(0.6931472)  # the policy starts as the SFT model
    torch.testing.assert_close(reference, sft_model, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reference, base_model, atol=1e-3)

    dpo = ["--model.objective", "DPO", "--model.method", "LoRA", "--model.init_from", str(checkpoint)]
    dpo += ["--data.format", "preference", "--data.train_path", str(data_dir / "pref_train.jsonl")]
    dpo += ["--data.val_path", str(data_dir / "pref_val.jsonl"), "--data.num_workers", "0"]
    assert cli(fit_args(*dpo, "--generation.num_samples", "0", run_dir=tmp_path / "dpo")) == 0
    aligned = tmp_path / "dpo" / "checkpoints" / "last.ckpt"
    assert cli(["export", "--ckpt", str(aligned), "--merge", "--output", str(tmp_path / "aligned")]) == 0
    # What `lightning-ft eval --model CKPT` evaluates: the aligned model, SFT start and DPO adapter together.
    evaluated, _ = load_causal_lm(str(aligned))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "aligned")
    probe = {"input_ids": batch["input_ids"][:2], "attention_mask": batch["attention_mask"][:2]}
    with torch.no_grad():
        torch.testing.assert_close(evaluated(**probe).logits, exported(**probe).logits, rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert cli(["export", "--ckpt", str(aligned), "--output", str(tmp_path / "adapter")]) == 2
    assert "adapts the model of --model.init_from" in capsys.readouterr().err and not (tmp_path / "adapter").exists()
