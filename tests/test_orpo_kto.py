"""ORPO and KTO: on the same model, adapter and batch, the loss and every logged metric equal TRL's own code."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from test_dpo import TRL_METRICS, dpo_module, our_batch, pairs, perturb_adapter, preference_examples
from transformers import AutoTokenizer

from lightning_ft.data.batching import PackedDataset, collate
from lightning_ft.data.formats import EncodeContext, TokenRules, Unpaired
from lightning_ft.objectives import DPO, KTO, ORPO

ORPO_METRICS = (*TRL_METRICS, "nll_loss", "log_odds_ratio", "log_odds_chosen")


def trl_self(trainer_class, **settings) -> SimpleNamespace:
    """A stand-in for a TRL trainer on one CPU process: its methods run on it as they would on the trainer."""
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda value: value)
    fake = SimpleNamespace(accelerator=accelerator, is_encoder_decoder=False, aux_loss_enabled=False, **settings)
    for name in ("concatenated_inputs", "get_batch_logps"):
        setattr(fake, name, getattr(trainer_class, name))
    for name in ("concatenated_forward", "odds_ratio_loss"):
        setattr(fake, name, getattr(trainer_class, name).__get__(fake))
    return fake


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_equals_trls_orpo_trainer_on_the_same_batch(tiny_model, data_dir, beta):
    """TRL's ORPOTrainer.get_batch_loss_metrics on our tokens (TRL's rows: every chosen, then every rejected)."""
    from trl.experimental.orpo import ORPOTrainer

    rows = pairs(data_dir)
    batch = our_batch(tiny_model, rows)
    module = dpo_module(tiny_model, DPO())
    perturb_adapter(module.model)
    n = len(rows)
    theirs = {}
    for side, part in (("chosen", slice(0, n)), ("rejected", slice(n, 2 * n))):
        theirs |= {
            f"{side}_input_ids": batch["input_ids"][part],
            f"{side}_attention_mask": batch["attention_mask"][part],
            f"{side}_labels": batch["labels"][part],
        }
    trl = trl_self(ORPOTrainer, beta=beta, padding_value=0)
    with torch.no_grad():
        trl_loss, trl_metrics = ORPOTrainer.get_batch_loss_metrics(trl, module.model, theirs)
        terms = ORPO(beta=beta).terms(module.policy, batch, training=True)
    torch.testing.assert_close(terms.loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert terms.count == n
    for name in ORPO_METRICS:
        assert terms.logged[name.replace("/", "_")].item() == pytest.approx(trl_metrics[name], rel=1e-5), name
    assert 0.0 < trl_metrics["rewards/accuracies"] < 1.0


def test_orpo_on_packed_pairs_equals_orpo_unpacked(tiny_model, data_dir):
    """Its NLL covers whole sequences, prompts too: packed rows must still start each sequence afresh."""
    rows = pairs(data_dir)
    unpacked = our_batch(tiny_model, rows)
    examples = preference_examples(tiny_model, rows)
    packed = collate([PackedDataset(examples, [[0, 1, 2], [3, 4, 5, 6, 7]])[i] for i in (0, 1)], pad_token_id=0)
    module = dpo_module(tiny_model, DPO())
    perturb_adapter(module.model)
    with torch.no_grad():
        one_row_each, shared_rows = (ORPO().terms(module.policy, b, training=True) for b in (unpacked, packed))
    torch.testing.assert_close(shared_rows.loss, one_row_each.loss, rtol=1e-5, atol=1e-6)
    for name, value in one_row_each.logged.items():
        torch.testing.assert_close(shared_rows.logged[name], value, rtol=1e-5, atol=1e-6)


def feedback(data_dir, n: int = 8) -> list[dict]:
    """Unpaired feedback from the test pairs: the chosen response of even pairs (desirable), the rejected of odd."""
    rows = pairs(data_dir, n)
    return [
        {"prompt": r["prompt"], "completion": r["chosen" if k % 2 == 0 else "rejected"], "label": k % 2 == 0}
        for k, r in enumerate(rows)
    ]


def feedback_examples(tiny_model, rows: list[dict]) -> list[dict]:
    context, rules, fmt = (
        EncodeContext(AutoTokenizer.from_pretrained(tiny_model), max_length=512),
        TokenRules(512),
        Unpaired(),
    )
    return [fmt.finish(fmt.encode_in(lambda i: fmt.encode(rows[i], context), k), rules)[0] for k in range(len(rows))]


@pytest.mark.parametrize(
    "ours",
    [KTO(), KTO(beta=0.3, desirable_weight=1.3, undesirable_weight=0.8), KTO(loss_type="apo_zero_unpaired")],
    ids=["kto", "weighted", "apo-zero"],
)
def test_kto_equals_trls_kto_trainer_on_the_same_batch(tiny_model, data_dir, ours):
    """TRL's KTOTrainer, its batch and KL completions from its own tokenization (rotated over one batch of the
    whole data, as ours rotate over the split), against ours on our tokens."""
    from trl import KTOConfig, KTOTrainer

    rows = feedback(data_dir)
    module = dpo_module(tiny_model, ours)
    settings = {k: getattr(ours, k) for k in ("beta", "desirable_weight", "undesirable_weight", "loss_type")}
    args = KTOConfig(
        output_dir="unused",
        report_to=[],
        max_length=None,
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=len(rows),
        **settings,
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = KTOTrainer(
        model=module.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    perturb_adapter(module.model)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    module.model.train()
    trl_loss = trainer.compute_loss(module.model, inputs)
    trl_metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}

    batch = collate(feedback_examples(tiny_model, rows), pad_token_id=tokenizer.pad_token_id)
    terms = module.objective.terms(module.policy, batch, training=True)

    torch.testing.assert_close(terms.loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert terms.count == len(rows)
    # kl is a difference of two sums of ~100 in fp32, of TRL's separate KL pass and our one pass: to 1e-5 absolute.
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl"):
        assert terms.logged[name.replace("/", "_")].item() == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-5), name
    assert terms.weight("rewards_chosen") == 4 and terms.weight("logps_rejected") == 4
    if ours.loss_type == "kto":
        assert trl_metrics["kl"] > 0  # the perturbed adapter moved the policy: the reference point is in play
