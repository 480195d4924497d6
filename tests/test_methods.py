"""Every method on the tiny model: loss goes down, frozen weights do not move, trainable counts are exact."""

from __future__ import annotations

import pytest
import torch
from conftest import LABELS
from lightning.pytorch import Trainer, seed_everything
from transformers import AutoConfig, BertConfig, BertForSequenceClassification

from lightning_ft import BottleneckAdapter, FineTuneDataModule, FineTuneModule, Full, LoRA, PrefixTuning, QLoRA
from lightning_ft.errors import UserError
from lightning_ft.methods import count_parameters
from lightning_ft.optim import Optim


def lora_count(config, r: int, targets: tuple[str, ...]) -> int:
    """r * (in + out) for every targeted Linear of every decoder layer."""
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    return config.num_hidden_layers * sum(r * sum(shapes[t]) for t in targets)


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def expected_trainable(method, config, total: int) -> int:
    h, layers = config.hidden_size, config.num_hidden_layers
    if isinstance(method, Full):
        return total
    if isinstance(method, LoRA):  # QLoRA included
        return lora_count(config, method.r, ALL_LINEAR)
    if isinstance(method, PrefixTuning):  # one key and one value vector per virtual token, layer and kv head dim
        kv = config.num_key_value_heads * (h // config.num_attention_heads)
        return method.num_virtual_tokens * layers * 2 * kv
    b = h // method.reduction_factor  # BottleneckAdapter after attention and MLP: down (h*b + b), up (b*h + h)
    return layers * 2 * (h * b + b + b * h + h)


def frozen_snapshot(model) -> dict[str, torch.Tensor]:
    """Every frozen weight and buffer (for 4-bit layers: the packed data and its quantization state)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().clone() for n, t in model.state_dict().items() if n not in trainable}


def mean_loss(module: FineTuneModule, loader) -> float:
    module.eval()
    with torch.no_grad():
        losses = [module.loss(batch)[0].item() for batch in loader]
    module.train()
    return sum(losses) / len(losses)


def train(module, datamodule, steps: int) -> None:
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule)


def setup(tiny_model, data_dir, method, lr, task="causal_lm"):
    seed_everything(0)
    classification = task == "sequence_classification"
    module = FineTuneModule(
        str(tiny_model),
        task=task,
        method=method,
        labels=LABELS if classification else None,
        optim=Optim(lr=lr, scheduler="constant"),
    )
    datamodule = FineTuneDataModule(
        "classification" if classification else "instruction",
        str(data_dir / ("cls_train.jsonl" if classification else "train.jsonl")),
        tokenizer=str(tiny_model),
        labels=LABELS if classification else None,
        batch_size=8,
        batching="pad" if method.supports_packing else "group_by_length",
    )
    module.configure_model()
    datamodule.setup("fit")
    return module, datamodule


CAUSAL_METHODS = [
    pytest.param(Full(), 3e-3, id="full"),
    pytest.param(LoRA(r=8, dropout=0.0), 1e-2, id="lora"),
    pytest.param(QLoRA(r=8, dropout=0.0, compute_dtype="float32"), 1e-2, id="qlora"),
    pytest.param(PrefixTuning(num_virtual_tokens=10), 1e-1, id="prefix"),
    pytest.param(BottleneckAdapter(reduction_factor=16), 1e-2, id="adapter"),
]


@pytest.mark.parametrize("method,lr", CAUSAL_METHODS)
def test_causal_lm_method_trains_only_what_it_should(tiny_model, data_dir, method, lr):
    module, datamodule = setup(tiny_model, data_dir, method, lr)
    config = AutoConfig.from_pretrained(tiny_model)
    trainable, total = count_parameters(module.model)
    assert trainable == expected_trainable(method, config, total)

    frozen = frozen_snapshot(module.model)
    before = mean_loss(module, datamodule.train_dataloader())
    train(module, datamodule, steps=12)
    after = mean_loss(module, datamodule.train_dataloader())

    assert after < before - 0.1, f"{method!r}: loss {before:.3f} -> {after:.3f}"
    assert frozen or isinstance(method, Full)
    assert_unchanged(module.model, frozen)


def assert_unchanged(model, frozen: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for name, value in frozen.items():
        assert torch.equal(state[name], value), f"frozen {name} moved"


@pytest.mark.parametrize(
    "method,lr", [pytest.param(Full(), 1e-3, id="full"), pytest.param(LoRA(r=8, dropout=0.0), 1e-2, id="lora")]
)
def test_sequence_classification_trains(tiny_model, data_dir, method, lr):
    module, datamodule = setup(tiny_model, data_dir, method, lr, task="sequence_classification")
    config = AutoConfig.from_pretrained(tiny_model)
    trainable, total = count_parameters(module.model)
    head = len(LABELS) * config.hidden_size  # Llama's `score` head has no bias
    assert trainable == (total if isinstance(method, Full) else lora_count(config, 8, ALL_LINEAR) + head)

    frozen = frozen_snapshot(module.model)
    before = mean_loss(module, datamodule.train_dataloader())
    train(module, datamodule, steps=12)
    assert mean_loss(module, datamodule.train_dataloader()) < before - 0.1
    assert_unchanged(module.model, frozen)


def test_qlora_quantizes_the_base_linears(tiny_model):
    module = FineTuneModule(str(tiny_model), method=QLoRA(compute_dtype="float32"))
    module.configure_model()
    base_layers = [m.get_base_layer() for n, m in module.model.named_modules() if n.endswith("q_proj")]
    assert base_layers and all(type(layer).__name__ == "Linear4bit" for layer in base_layers)
    assert all(type(layer.weight).__name__ == "Params4bit" for layer in base_layers)


def logits(model, input_ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def test_bottleneck_adapter_starts_equal_to_base(tiny_model):
    base = FineTuneModule(str(tiny_model))
    adapted = FineTuneModule(str(tiny_model), method=BottleneckAdapter(bottleneck_size=8, non_linearity="gelu"))
    base.configure_model()
    adapted.configure_model()
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    assert torch.equal(logits(base.model, ids), logits(adapted.model, ids))
    assert sum(1 for n, _ in adapted.model.named_modules() if n.endswith(".adapter")) == 4


@pytest.mark.parametrize("placement,per_layer", [("both", 2), ("mlp", 1), ("attention", 1)])
def test_bottleneck_adapter_placement_on_bert(placement, per_layer):
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3
    )
    model = BertForSequenceClassification(config)
    method = BottleneckAdapter(bottleneck_size=4, placement=placement)
    targets = method.target_names(model)
    assert len(targets) == 2 * per_layer
    if placement == "mlp":  # BERT's MLP output is `output.dense`, which attention.output.dense must not match
        assert all("attention" not in t for t in targets)
    method.apply(model, "sequence_classification")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert len(trainable) == 2 + 4 * 2 * per_layer


def test_lora_merge_computes_what_the_adapter_computed(tiny_model):
    module = FineTuneModule(str(tiny_model), method=LoRA(r=4, dropout=0.0))
    module.configure_model()
    with torch.no_grad():  # B starts at zero: give the update something to merge
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    expected = logits(module.model, ids)
    merged = module.method.merge(module.model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=1e-5)


def test_qlora_merge_dequantizes_and_keeps_the_update(tiny_model):
    module = FineTuneModule(str(tiny_model), method=QLoRA(r=4, dropout=0.0, compute_dtype="float32"))
    module.configure_model()
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    expected = logits(module.model, ids)  # an eval pass, as validation runs before any merge
    merged = module.method.merge(module.model)
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", [PrefixTuning(num_virtual_tokens=4), BottleneckAdapter()], ids=["prefix", "adapter"])
def test_unmergeable_methods_say_why(tiny_model, method):
    module = FineTuneModule(str(tiny_model), method=method)
    module.configure_model()
    with pytest.raises(UserError, match="cannot be merged"):
        method.merge(module.model)


@pytest.mark.parametrize("method", [m.values[0] for m in CAUSAL_METHODS], ids=[m.id for m in CAUSAL_METHODS])
def test_trainable_state_dict_loads_back_into_a_fresh_base(tiny_model, method):
    trained = FineTuneModule(str(tiny_model), method=method)
    trained.configure_model()
    with torch.no_grad():  # stand-in for training: move every trainable weight
        for p in trained.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    saved = {k: v.clone() for k, v in method.trainable_state_dict(trained.model).items()}
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    expected = logits(trained.model, ids)

    fresh = FineTuneModule(str(tiny_model), method=method)
    fresh.configure_model()
    assert not torch.equal(logits(fresh.model, ids), expected)
    method.load_trainable_state_dict(fresh.model, saved)
    torch.testing.assert_close(logits(fresh.model, ids), expected)
    with pytest.raises(UserError, match="do not fit this model"):
        method.load_trainable_state_dict(fresh.model, dict(list(saved.items())[1:]))


def test_dora_adds_a_magnitude_per_output_feature(tiny_model):
    module = FineTuneModule(str(tiny_model), method=LoRA(r=4, target_modules=["q_proj", "v_proj"], use_dora=True))
    module.configure_model()
    config = AutoConfig.from_pretrained(tiny_model)
    kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    magnitudes = config.num_hidden_layers * (config.hidden_size + kv)
    assert count_parameters(module.model)[0] == lora_count(config, 4, ("q_proj", "v_proj")) + magnitudes


def test_qlora_without_a_working_4bit_kernel_fails_with_one_line(monkeypatch, tiny_model):
    import bitsandbytes.functional

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", broken)
    with pytest.raises(UserError, match="QLoRA needs bitsandbytes with 4-bit support on cpu: no kernel"):
        FineTuneModule(str(tiny_model), method=QLoRA())


def test_incompatible_combinations_fail_before_loading(tiny_model):
    with pytest.raises(UserError, match="gradient_checkpointing"):
        FineTuneModule(str(tiny_model), method=PrefixTuning(), gradient_checkpointing=True)
    module = FineTuneModule(str(tiny_model), method=LoRA(target_modules=["q_proj", "qkv"]))
    with pytest.raises(UserError, match=r"\['qkv'\] match no layer; layers: .*q_proj"):
        module.configure_model()


def lora_gradients(module, batch) -> dict[str, torch.Tensor]:
    module.model.zero_grad()
    module.loss(batch)[0].backward()
    return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad}


def test_qlora_gradients_do_not_change_after_an_eval_pass(tiny_model, data_dir):
    """Validation runs between training steps; it must not switch the 4-bit layers to a kernel without autograd."""
    module, datamodule = setup(tiny_model, data_dir, QLoRA(r=4, dropout=0.0, compute_dtype="float32"), 1e-2)
    batch = next(iter(datamodule.train_dataloader()))
    before = lora_gradients(module, batch)
    mean_loss(module, [batch])
    after = lora_gradients(module, batch)
    for name in before:
        torch.testing.assert_close(after[name], before[name])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, data_dir):
    grads = []
    for checkpointing in (False, True):
        seed_everything(0)
        module = FineTuneModule(str(tiny_model), method=LoRA(dropout=0.0), gradient_checkpointing=checkpointing)
        module.configure_model()
        datamodule = FineTuneDataModule("instruction", str(data_dir / "train.jsonl"), tokenizer=str(tiny_model))
        datamodule.setup("fit")
        module.loss(next(iter(datamodule.train_dataloader())))[0].backward()
        grads.append({n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)
