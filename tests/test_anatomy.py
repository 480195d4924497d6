"""Model anatomy (anatomy.py), the one place sharding, compile, pruning, the adapters and the loss learn where a
model's blocks, sublayers and heads are: what it finds in a tiny Llama causal LM and a tiny BERT classifier."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, BertConfig, BertForSequenceClassification

from lightning_ft import anatomy


def test_a_llama_causal_lm(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    layers = model.config.num_hidden_layers
    assert anatomy.block_class_names(model) == {"LlamaDecoderLayer"}
    assert [name for name, _ in anatomy.transformer_blocks(model)] == [f"model.layers.{i}" for i in range(layers)]
    linears = {name.split(".", 3)[-1] for name, _ in anatomy.block_linears(model)}
    expected = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}
    assert linears == expected | {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    assert [layout for layout, _ in anatomy.attention_sublayers(model)] == ["llama"] * layers
    assert [(names, out) for _, names, _, out in anatomy.mlp_sublayers(model)] == [
        (["gate_proj", "up_proj"], "down_proj")
    ] * layers
    outputs = anatomy.sublayer_outputs(model)
    assert outputs[:2] == [("model.layers.0.self_attn.o_proj", "attention"), ("model.layers.0.mlp.down_proj", "mlp")]
    assert len(outputs) == 2 * layers
    assert anatomy.output_head(model) is model.lm_head
    assert anatomy.backbone(model) is model.model
    assert "lm_head" in anatomy.linear_module_names(model)
    assert list(anatomy.classifier_heads(model)) == []


def test_a_bert_classifier_whose_attention_output_is_no_mlp_output():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    model = BertForSequenceClassification(config)
    assert anatomy.block_class_names(model) >= {"BertLayer"}
    assert [layout for layout, _ in anatomy.attention_sublayers(model)] == ["bert", "bert"]
    (in_parent, in_names, out_parent, out_name), _ = anatomy.mlp_sublayers(model)
    assert (in_parent, in_names, out_parent, out_name) == (
        model.bert.encoder.layer[0].intermediate,
        ["dense"],
        model.bert.encoder.layer[0].output,
        "dense",
    )
    # attention.output.dense ends in output.dense, the MLP's suffix, too: it counts once, as attention
    assert anatomy.sublayer_outputs(model)[:2] == [
        ("bert.encoder.layer.0.attention.output.dense", "attention"),
        ("bert.encoder.layer.0.output.dense", "mlp"),
    ]
    assert list(anatomy.classifier_heads(model)) == [model.classifier]
    assert anatomy.backbone(model) is model.bert
