"""DPO and its variants: on the same model, adapter and batch, the loss and every reward metric equal TRL's
DPOTrainer; the reference costs no second model (the base with its adapters off) and equals the base exactly."""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl
from datasets import Dataset
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities.parsing import is_picklable
from peft import PeftModel
from tiny_model import WORDS, build_tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_ft import BottleneckAdapter, FineTuneDataModule, FineTuneModule, Full, LoRA, PrefixTuning
from lightning_ft.callbacks.generation import generate
from lightning_ft.data.batching import PackedDataset, collate
from lightning_ft.data.formats import EncodeContext, Instruction, Preference, TokenRules
from lightning_ft.objectives import DPO, KTO, ORPO, SimPO
from lightning_ft.objectives.pairs import pair_logps
from lightning_ft.optim import Optim

TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
TRL_METRICS += ("logps/chosen", "logps/rejected")
QUIET = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
QUIET |= {"enable_model_summary": False}
FEEDBACK_FILES = ["--data.train_path", "{data}/feedback_train.jsonl", "--data.val_path", "{data}/feedback_val.jsonl"]
FEEDBACK = ["--data.format", "unpaired", *FEEDBACK_FILES]


def pairs(data_dir, n: int = 8) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "pref_train.jsonl").read_text().splitlines()[:n]]


def preference_examples(tiny_model, rows: list[dict]) -> list[dict]:
    context, rules = EncodeContext(AutoTokenizer.from_pretrained(tiny_model), max_length=512), TokenRules(512)
    return [Preference().finish(Preference().encode(row, context), rules)[0] for row in rows]


def our_batch(tiny_model, rows: list[dict]) -> dict:
    return collate(
        preference_examples(tiny_model, rows), pad_token_id=AutoTokenizer.from_pretrained(tiny_model).pad_token_id
    )


def perturb_adapter(model, seed: int = 0) -> None:
    """LoRA starts as the base model (B = 0): give it weights, so that policy and reference differ."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A.default" in name or "lora_B.default" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 1.0)


def dpo_module(tiny_model, objective: DPO) -> FineTuneModule:
    module = FineTuneModule(str(tiny_model), method=LoRA(dropout=0.0), objective=objective)
    module.configure_model()
    return module


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (DPO(beta=0.1), {"loss_type": ["sigmoid"]}),
        (DPO(beta=0.3, loss_type="hinge"), {"beta": 0.3, "loss_type": ["hinge"]}),
        (DPO(beta=0.5, loss_type="ipo"), {"beta": 0.5, "loss_type": ["ipo"]}),
        (DPO(loss_type="robust", label_smoothing=0.2), {"loss_type": ["robust"], "label_smoothing": 0.2}),
        (DPO(rpo_alpha=0.7), {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.7]}),
    ],
    ids=["sigmoid", "hinge", "ipo", "robust", "rpo"],
)
def test_the_loss_and_metrics_equal_trls_dpo_trainer_on_the_same_batch(tiny_model, data_dir, ours, theirs):
    from trl import DPOConfig, DPOTrainer

    rows = pairs(data_dir)
    module = dpo_module(tiny_model, ours)
    args = DPOConfig(output_dir="unused", report_to=[], max_length=None, use_cpu=True, bf16=False, **theirs)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = DPOTrainer(
        model=module.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    perturb_adapter(module.model)  # after TRL copied the fresh adapter as its reference: the base model, as ours
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    module.model.train()
    trl_loss = trainer.compute_loss(module.model, inputs)
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}

    terms = module.objective.terms(module.policy, our_batch(tiny_model, rows), training=True)

    torch.testing.assert_close(terms.loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert terms.count == len(rows)
    for name in TRL_METRICS:
        ours_value = terms.logged[name.replace("/", "_")].item()
        assert ours_value == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-6), name
    assert 0.0 < trl_metrics["rewards/accuracies"] < 1.0  # the perturbed adapter prefers some pairs, not all


def test_conservative_dpo_is_the_label_smoothed_sigmoid(tiny_model, data_dir):
    """TRL 1.16 dropped label smoothing from its sigmoid loss: checked against the formula (Mitchell, 2023)."""
    rows, eps, beta = pairs(data_dir), 0.1, 0.1
    module = dpo_module(tiny_model, DPO(beta=beta, label_smoothing=eps))
    perturb_adapter(module.model)
    batch = our_batch(tiny_model, rows)
    with torch.no_grad():
        policy = pair_logps(module.policy.label_logps(batch), batch)
        with module.model.disable_adapter():
            base = pair_logps(module.policy.label_logps(batch), batch)
        terms = module.objective.terms(module.policy, batch, training=True)
    delta = beta * ((policy.chosen - base.chosen) - (policy.rejected - base.rejected))
    expected = (-(1 - eps) * F.logsigmoid(delta) - eps * F.logsigmoid(-delta)).mean()
    torch.testing.assert_close(terms.loss, expected)


@pytest.mark.parametrize(
    "method", [LoRA(dropout=0.0), BottleneckAdapter(), PrefixTuning()], ids=lambda m: type(m).__name__
)
def test_the_reference_is_the_base_model_exactly(tiny_model, data_dir, method):
    """The adapters-off pass through the policy gives the plain base model's log-probabilities, bit for bit."""
    batch = our_batch(tiny_model, pairs(data_dir))
    module = FineTuneModule(str(tiny_model), method=method, objective=DPO())
    module.configure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained adapters: the policy differs from its base
        for parameter in module.model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        reference = module.objective._reference[0].label_logps(batch)
        plain = torch.log_softmax(base(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1], -1)
        policy = module.policy.label_logps(batch)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    expected = plain.gather(2, labels.clamp(min=0)[..., None]).squeeze(-1) * mask
    assert torch.equal(reference[mask], expected[mask])
    assert not torch.allclose(policy[mask], expected[mask])  # while the policy, with its adapter, differs
    # Configured, the objective holds the reference: still it pickles as its settings, so that Lightning keeps it in
    # the hyperparameters checkpoints are saved with (it dropped it, with a warning, when fit followed configure).
    assert is_picklable(module.hparams["objective"]) and pickle.loads(pickle.dumps(module.objective)) == DPO()


def test_packed_pairs_give_the_unpacked_log_probabilities(tiny_model, data_dir):
    """Many pairs in one row (attention kept within each sequence) score each response as TRL's layout does."""
    examples = preference_examples(tiny_model, pairs(data_dir))
    unpacked = collate(examples, pad_token_id=0)
    packed = collate([PackedDataset(examples, [[0, 1, 2], [3, 4, 5, 6, 7]])[i] for i in (0, 1)], pad_token_id=0)
    module = dpo_module(tiny_model, DPO())
    perturb_adapter(module.model)
    with torch.no_grad():
        one_row_each, shared_rows = (pair_logps(module.policy.label_logps(b), b) for b in (unpacked, packed))
    assert packed["input_ids"].shape[0] == 2 and unpacked["input_ids"].shape[0] == 16
    for name in ("chosen", "rejected", "chosen_tokens", "rejected_tokens"):
        torch.testing.assert_close(getattr(shared_rows, name), getattr(one_row_each, name), rtol=1e-5, atol=1e-5)


COLORS, ANIMALS = WORDS[:8], WORDS[8:]
STEPS = 300
SFT_STEPS = 400


def category_pairs() -> list[dict]:
    """Name a color / an animal: chosen, a word of that kind; rejected, one of the other kind (every combination)."""
    rows = []
    for kind, same, other in (("a color", COLORS, ANIMALS), ("an animal", ANIMALS, COLORS)):
        rows += [{"prompt": f"Name {kind}:\n", "chosen": c, "rejected": r} for c in same for r in other]
    random.Random(0).shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The usual start of DPO: a supervised model, here one trained to answer a word of the other kind 60% of the
    time (greedy: wrong for both prompts). Its vocabulary holds each word as one token, as a real tokenizer's holds
    common words, so the kind is decided at one position (spelled in the shared tiny model's characters, it is
    decided inside prefixes such as "Ġbl" of blue and black). Its prompts tokenize as the pairs' do: the stripped
    instruction, then the template's newline, equals the pairs' prompt ending in one (an SFT model trained on
    another spelling gives the pairs' answers ~1e-8 and DPO only displaces)."""
    tmp = tmp_path_factory.mktemp("dpo")
    rows = category_pairs()
    train, val = rows[:96], rows[96:]
    texts = [r["prompt"] + r[side] for r in rows for side in ("chosen", "rejected")]
    base = build_tiny_llama(tmp / "base", texts, hidden=64, layers=2, vocab_size=400)
    pick = random.Random(1)
    sft = [{"instruction": r["prompt"], "output": r["rejected" if pick.random() < 0.6 else "chosen"]} for r in train]
    seed_everything(0)
    module = FineTuneModule(str(base), method=Full(), optim=Optim(lr=3e-3, scheduler="constant"))
    raw = Instruction(template="{instruction}\n", template_no_input="{instruction}\n")
    data = FineTuneDataModule(raw, str(write_jsonl(tmp / "sft.jsonl", sft)), tokenizer=str(base), max_length=64)
    Trainer(max_steps=SFT_STEPS, limit_val_batches=0, **QUIET).fit(module, data)
    module.model.save_pretrained(tmp / "sft")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp / "sft")
    write_jsonl(tmp / "train.jsonl", train)
    write_jsonl(tmp / "val.jsonl", val)
    # KTO's unpaired feedback: each training pair as two judged completions
    judged = [
        {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
        for r in train
        for side in ("chosen", "rejected")
    ]
    write_jsonl(tmp / "feedback.jsonl", random.Random(2).sample(judged, len(judged)))
    return tmp / "sft", val


def right_kind(model, tokenizer, val: list[dict]) -> float:
    """The share of held-out prompts whose greedy answer is a word of the asked kind."""
    answers = generate(model.eval(), tokenizer, [tokenizer(r["prompt"])["input_ids"] for r in val], 8)
    model.train()
    kinds = [COLORS if "color" in r["prompt"] else ANIMALS for r in val]
    return sum(bool(a.split()) and a.split()[0] in kind for a, kind in zip(answers, kinds)) / len(val)


def align(model: Path, objective, data: FineTuneDataModule, val: list[dict], **fit) -> tuple[float, float, dict]:
    """Full fine-tuning of the SFT model; returns the share of greedy answers of the asked kind before and after, and
    the held-out DPO metrics (for KTO, of its policy scored as a DPO policy against the same reference)."""
    seed_everything(0)
    lr = fit.pop("lr", 1e-4)
    module = FineTuneModule(str(model), method=Full(), objective=objective, optim=Optim(lr=lr, scheduler="constant"))
    module.configure_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    before = right_kind(module.model, tokenizer, val)
    Trainer(**fit, **QUIET).fit(module, data)
    judge = FineTuneModule(str(model), method=Full(), objective=DPO())
    judge.configure_model()
    judge.load_state_dict(module.state_dict())
    pairs = FineTuneDataModule(
        "preference", str(model.parent / "train.jsonl"), val_path=str(model.parent / "val.jsonl"), tokenizer=str(model)
    )
    metrics = Trainer(**QUIET).validate(judge, pairs, verbose=False)[0]
    return before, right_kind(module.model, tokenizer, val), metrics


@pytest.mark.parametrize(
    "objective",
    [DPO(beta=0.1), DPO(beta=0.1, rpo_alpha=1.0), SimPO(beta=2.0, gamma=0.5), ORPO(beta=0.5)],
    ids=["dpo", "rpo", "simpo", "orpo"],
)
def test_dpo_learns_the_preferred_kind_of_answer(sft_model, objective):
    """Stopped once held-out rewards/accuracies reaches 0.9 (checked every 25 steps), as one stops DPO: past that
    point these objectives over-optimise, both likelihoods fall and the greedy answers stop being words, the
    likelihood displacement of Razin et al. 2024 (measured with DPO: at 1e-4 the answers stay right to step ~150
    and are gone by 250; at 1e-3 they are gone before accuracy reaches 0.9)."""
    model, val = sft_model
    train_file, val_file = model.parent / "train.jsonl", model.parent / "val.jsonl"
    data = FineTuneDataModule(
        "preference", str(train_file), val_path=str(val_file), tokenizer=str(model), max_length=64
    )
    stop = EarlyStopping("val_rewards_accuracies", mode="max", stopping_threshold=0.9, patience=STEPS)
    fit = {"max_steps": STEPS, "val_check_interval": 25, "check_val_every_n_epoch": None, "callbacks": [stop]}
    before, after, metrics = align(model, objective, data, val, **fit)
    # Measured (32 held-out pairs; accuracy 0 before, when policy and reference are equal): stopped at steps 125 (DPO),
    # 250 (RPO), 125 (SimPO), 75 (ORPO) with accuracies 0.91-0.94; greedy answers of the asked kind 0.0 -> 1.0 each
    assert metrics["val_rewards_accuracies"] >= 0.9 and metrics["val_rewards_margins"] > 0, metrics
    assert before < 0.5 and after >= 0.9, (before, after)


def test_kto_learns_the_preferred_kind_of_answer_from_unpaired_feedback(sft_model):
    """Trained on judged completions, scored as DPO scores a policy on the held-out pairs: the implicit reward
    beta x (log-ratio to the reference) of the chosen response above the rejected one's."""
    model, val = sft_model
    feedback = FineTuneDataModule("unpaired", str(model.parent / "feedback.jsonl"), tokenizer=str(model), max_length=64)
    before, after, metrics = align(model, KTO(), feedback, val, lr=5e-5, max_steps=250, limit_val_batches=0)
    # Measured: accuracy 1.0, greedy answers of the asked kind 0.0 -> 1.0 (at 5e-5 they stay right from step 150 to
    # 300 and are gone by 400)
    assert metrics["val_rewards_accuracies"] >= 0.9 and metrics["val_rewards_margins"] > 0, metrics
    assert before < 0.5 and after >= 0.9, (before, after)


def test_a_dpo_run_fits_validates_and_exports_an_adapter_plain_peft_loads(
    cli, fit_args, tiny_model, data_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    pairs = ["--data.format", "preference", "--data.train_path", str(data_dir / "pref_train.jsonl")]
    pairs += ["--data.val_path", str(data_dir / "pref_val.jsonl"), "--data.num_workers", "0"]
    dpo = ["--model.objective", "DPO", "--model.method", "LoRA", "--generation.num_samples", "0", *pairs]
    dpo += ["--trainer.precision", "32-true", "--model.optim.lr", "1e-2"]  # fp32, as TRL's evaluate below
    assert cli(fit_args(*dpo, "--checkpoint.monitor", "val_rewards_accuracies", "--checkpoint.mode", "max")) == 0
    final = json.loads((run / "run.json").read_text())["metrics"]["final"]
    assert {f"val_{name.replace('/', '_')}" for name in TRL_METRICS} <= set(final) and "val_perplexity" not in final
    capsys.readouterr()
    assert cli(["compare", str(run), "--metric", "val_rewards_accuracies"]) == 0
    shown = capsys.readouterr().out
    best = json.loads((run / "run.json").read_text())["metrics"]["best"]["val_rewards_accuracies"]  # max: monitored
    assert best >= final["val_rewards_accuracies"] and f"│ {best:.4f} " in shown
    checkpoint = run / "checkpoints" / "last.ckpt"
    validate = fit_args(*dpo, run_dir=tmp_path / "validate")[1:]
    assert cli(["validate", *validate, "--ckpt_path", str(checkpoint)]) == 0
    shown = re.search(r"val_loss\s+│?\s*([\d.]+)", capsys.readouterr().out)
    assert shown and float(shown.group(1)) == pytest.approx(final["val_loss"], rel=1e-4)

    assert cli(["export", "--ckpt", str(checkpoint), "--output", str(tmp_path / "adapter")]) == 0
    aligned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter")
    assert any("lora_B" in name and p.abs().sum() > 0 for name, p in aligned.named_parameters())  # it moved

    # TRL's DPOTrainer.evaluate() on the exported adapter, against the base model, on the same file of pairs
    from trl import DPOConfig, DPOTrainer

    val = Dataset.from_list([json.loads(line) for line in (data_dir / "pref_val.jsonl").read_text().splitlines()])
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=None, use_cpu=True, bf16=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    datasets = {"train_dataset": val, "eval_dataset": val}
    trainer = DPOTrainer(model=aligned, ref_model=base, args=args, processing_class=tokenizer, **datasets)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(float(shown.group(1)), rel=1e-4)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--model.objective", "DPO"],
            "--model.objective DPO trains on pairs; --data.format Instruction holds examples",
        ),
        (
            ["--data.format", "preference"],
            "--model.objective CrossEntropy trains on examples; --data.format Preference",
        ),
        (["--model.objective", "DPO", "--model.objective.beta", "0"], "--model.objective.beta must be positive, got 0"),
        (
            ["--model.objective", "DPO", *FEEDBACK],
            "--model.objective DPO trains on pairs; --data.format Unpaired holds completions",
        ),
        (
            ["--model.objective", "DPO", "--data.format", "preference", *FEEDBACK_FILES],
            "{data}/feedback_train.jsonl: field 'chosen' is in no record; fields there: ['completion', 'label', 'prompt']",
        ),
        (
            ["--model.objective", "KTO", "--data.format", "preference", "--data.train_path", "{data}/pref_train.jsonl"],
            "--model.objective KTO trains on completions; --data.format Preference holds pairs",
        ),
    ],
    ids=["dpo-on-examples", "sft-on-pairs", "zero-beta", "dpo-on-unpaired", "feedback-read-as-pairs", "kto-on-pairs"],
)
def test_an_objective_given_the_wrong_data_or_settings_is_one_line(
    cli, fit_args, capsys, tmp_path, data_dir, flags, message
):
    flags, message = [f.replace("{data}", str(data_dir)) for f in flags], message.replace("{data}", str(data_dir))
    assert cli(fit_args(*flags)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("objective", [SimPO(beta=2.0, gamma=0.5), SimPO(beta=2.5, gamma=1.0, label_smoothing=0.1)])
def test_simpo_equals_trls_cpo_simpo_loss_on_the_same_log_probabilities(tiny_model, data_dir, objective):
    """The log-probabilities are the ones TRL's DPOTrainer agrees with (above); averaged per token, TRL's own
    CPOTrainer loss (loss_type simpo) on them gives ours, and its rewards too."""
    from types import SimpleNamespace

    from trl.experimental.cpo import CPOTrainer

    batch = our_batch(tiny_model, pairs(data_dir))
    module = dpo_module(tiny_model, DPO())
    perturb_adapter(module.model)
    with torch.no_grad():
        sums = pair_logps(module.policy.label_logps(batch), batch)
        terms = objective.terms(module.policy, batch, training=True)
    settings = {"beta": objective.beta, "simpo_gamma": objective.gamma, "label_smoothing": objective.label_smoothing}
    trl = SimpleNamespace(alpha=0.0, loss_type="simpo", accelerator=SimpleNamespace(device="cpu"), **settings)
    losses, chosen, rejected = CPOTrainer.cpo_loss(
        trl, sums.chosen / sums.chosen_tokens, sums.rejected / sums.rejected_tokens
    )
    torch.testing.assert_close(terms.loss, losses.mean())
    torch.testing.assert_close(terms.logged["rewards_chosen"], chosen.mean())
    torch.testing.assert_close(terms.logged["rewards_accuracies"], (chosen > rejected).float().mean())


def test_full_fine_tuning_compares_against_a_frozen_copy_kept_out_of_the_module(tiny_model, data_dir):
    module = FineTuneModule(str(tiny_model), method=Full(), objective=DPO())
    module.configure_model()
    terms = module.loss(our_batch(tiny_model, pairs(data_dir)))
    assert terms.loss.item() == pytest.approx(0.6931472)  # log 2: policy and reference start equal
    terms.loss.backward()
    reference = module.objective._reference[0].model
    assert reference is not module.model and not any(p.requires_grad for p in reference.parameters())
    assert set(module.state_dict()) == {f"model.{k}" for k in module.model.state_dict()}  # no copy in checkpoints
    assert all(p.grad is None for p in reference.parameters()) and module.model.lm_head.weight.grad is not None
