"""The fast paths change nothing but speed: the loss from hidden states equals the model's own, in value and in
every gradient; the defaults pick bf16 only where the device computes it natively, and keep trained weights fp32."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

import lightning_ft.loss
from lightning_ft import FineTuneModule, Full, LoRA, PrefixTuning
from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.errors import UserError
from lightning_ft.loss import plain_output_head
from lightning_ft.precision import fastest_precision


def batches(vocab: int) -> dict[str, dict]:
    """A padded batch (attention mask, prompt tokens unlabelled) and a packed one (position ids, no mask)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (3, 20), generator=generator)
    labels = ids.clone()
    labels[:, :6] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[1, 15:], mask[2, 9:] = 0, 0
    labels[mask == 0] = IGNORE_INDEX
    positions = torch.cat([torch.arange(8), torch.arange(12)]).repeat(3, 1)
    packed_labels = ids.clone()
    packed_labels[:, [0, 8]] = IGNORE_INDEX
    return {
        "padded": {"input_ids": ids, "attention_mask": mask, "labels": labels},
        "packed": {"input_ids": ids, "position_ids": positions, "labels": packed_labels},
    }


def loss_and_grads(module: FineTuneModule, batch: dict) -> tuple[float, int, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss, count, *_ = module.loss(batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return loss.item(), count, grads


@pytest.mark.parametrize("method", ["lora", "full", "full_tied"])
@pytest.mark.parametrize("autocast", [False, True])
def test_the_loss_from_hidden_states_equals_the_models_own(tiny_model, monkeypatch, method, autocast):
    torch.manual_seed(0)
    module = FineTuneModule(str(tiny_model), method=LoRA(dropout=0.0) if method == "lora" else Full())
    module.configure_model()
    if method == "full_tied":  # the head's gradient must also reach the input embedding it shares
        module.model.lm_head.weight = module.model.model.embed_tokens.weight
    assert plain_output_head(module.model) is module.model.get_output_embeddings()
    monkeypatch.setattr(lightning_ft.loss, "CHUNK_ROWS", 7)  # several chunks and a ragged last one
    for name, batch in batches(module.model.config.vocab_size).items():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            fused = loss_and_grads(module, batch)
            with monkeypatch.context() as plain:
                plain.setattr("lightning_ft.forward.plain_output_head", lambda model: None)
                reference = loss_and_grads(module, batch)
        assert fused[1] == reference[1] == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        assert fused[0] == pytest.approx(reference[0], rel=1e-4 if autocast else 1e-6), name
        assert fused[2].keys() == reference[2].keys() and fused[2], name
        for key, grad in reference[2].items():
            tolerance = {"atol": 2e-3, "rtol": 2e-2} if autocast else {"atol": 1e-6, "rtol": 1e-5}
            torch.testing.assert_close(fused[2][key], grad, **tolerance, msg=f"{name} {key}")


def test_heads_that_are_not_a_plain_projection_keep_the_models_own_logits(tiny_model):
    lora_on_head = FineTuneModule(str(tiny_model), method=LoRA(target_modules=["q_proj", "lm_head"]))
    lora_on_head.configure_model()
    assert plain_output_head(lora_on_head.model) is None  # peft's LoRA layer, not a Linear
    assert not PrefixTuning.hidden_state_loss  # peft feeds the prefix only through the model's own forward
    hooked = FineTuneModule(str(tiny_model))
    hooked.configure_model()
    hooked.model.lm_head.register_forward_hook(lambda module, args, out: out * 2)
    assert plain_output_head(hooked.model) is None


def test_compile_without_a_c_compiler_is_one_clear_error(tiny_model, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--model.compile true needs a C\\+\\+ compiler on CPU"):
        FineTuneModule(str(tiny_model), compile=True)


@pytest.mark.parametrize("has_bf16,expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_the_default_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, has_bf16, expected):
    monkeypatch.setattr("lightning_ft.precision.cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fastest_precision("auto") == fastest_precision("cpu") == expected


@pytest.mark.parametrize("precision,method,base_dtype", [
    ("bf16-mixed", LoRA(), torch.bfloat16),
    ("32-true", LoRA(), torch.float32),
    ("bf16-mixed", Full(), torch.float32),
])  # fmt: skip
def test_frozen_weights_follow_the_compute_dtype_and_trained_ones_stay_fp32(tiny_model, precision, method, base_dtype):
    module = FineTuneModule(str(tiny_model), method=method)
    module.trainer = Trainer(precision=precision, logger=False, enable_checkpointing=False)
    module.configure_model()
    frozen = {p.dtype for p in module.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in module.model.parameters() if p.requires_grad}
    assert frozen <= {base_dtype} and trained == {torch.float32}
