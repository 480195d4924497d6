"""Where things are in a Hugging Face model: its transformer blocks, their attention and MLP sublayers, the heads.

Sharding, compiling, pruning, the adapters and the loss all ask here, so an architecture that lays itself out
differently is taught in one place.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

# Output projections of the attention and MLP sublayers in common architectures (Llama/Mistral/Qwen, BERT,
# GPT-2, OPT/BART, Falcon/Bloom, GPT-NeoX). A name matches if it ends with one of these.
ATTENTION_OUTPUTS = (
    "self_attn.o_proj",
    "attention.output.dense",
    "attn.c_proj",
    "self_attn.out_proj",
    "self_attention.dense",
    "attention.dense",
)
MLP_OUTPUTS = ("mlp.down_proj", "output.dense", "mlp.c_proj", "fc2", "mlp.dense_4h_to_h")
# Heads that transformers' sequence classifiers create fresh (no pretrained weights).
CLASSIFIER_HEADS = ("classifier", "score")
# Linear-like layers besides nn.Linear: bitsandbytes' quantized ones and GPT-2's Conv1D.
LINEAR_LIKE = ("Linear4bit", "Linear8bitLt", "Conv1D")

# ------------------------------------------------------------------------------------------------ blocks


def block_class_names(model: nn.Module) -> set[str]:
    """Class names of the transformer blocks of every Hugging Face model inside `model`: their `_no_split_modules`
    (LlamaDecoderLayer, BertLayer, ...), so no per-architecture list is needed."""
    return {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or ())}


def transformer_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, block) of every transformer block, outermost first."""
    names = block_class_names(model)
    return ((name, module) for name, module in model.named_modules() if type(module).__name__ in names)


def block_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(qualified name, layer) of every Linear layer inside a transformer block."""
    for block_name, block in transformer_blocks(model):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                yield f"{block_name}.{name}", module


# ------------------------------------------------------------------------------------------------ sublayers


def attention_layout(module: nn.Module) -> str | None:
    """ "llama" for an attention with q/k/v/o_proj, "bert" for self.query/key/value + output.dense, else None."""
    if all(hasattr(module, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "llama"
    if hasattr(getattr(module, "self", None), "query") and hasattr(getattr(module, "output", None), "dense"):
        return "bert"
    return None


def attention_sublayers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(layout, module) of every self-attention whose layout `attention_layout` knows."""
    return [(layout, module) for module in model.modules() if (layout := attention_layout(module))]


def mlp_projections(module: nn.Module) -> tuple[nn.Module, list[str], nn.Module, str] | None:
    """(parent of the input projections, their names, parent of the output projection, its name) when `module` is
    a Llama-style (gate/up/down_proj) or BERT-style (intermediate.dense + output.dense) MLP, else None."""
    if hasattr(module, "up_proj") and hasattr(module, "down_proj"):  # Llama family; gate_proj when gated
        return module, [name for name in ("gate_proj", "up_proj") if hasattr(module, name)], module, "down_proj"
    if hasattr(getattr(module, "intermediate", None), "dense") and hasattr(getattr(module, "output", None), "dense"):
        return module.intermediate, ["dense"], module.output, "dense"  # BERT family
    return None


def mlp_sublayers(model: nn.Module) -> list[tuple[nn.Module, list[str], nn.Module, str]]:
    """`mlp_projections` of every MLP whose layout it knows."""
    return [found for module in model.modules() if (found := mlp_projections(module))]


def _matches(name: str, suffixes) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def sublayer_outputs(
    model: nn.Module, attention: tuple[str, ...] = ATTENTION_OUTPUTS, mlp: tuple[str, ...] = MLP_OUTPUTS
) -> list[tuple[str, str]]:
    """(qualified name, "attention" or "mlp") of every sublayer output projection, by name suffix."""
    found = []
    for name, _ in model.named_modules():
        if _matches(name, attention):
            found.append((name, "attention"))
        elif _matches(name, mlp):  # BERT's attention.output.dense ends in output.dense too: attention wins
            found.append((name, "mlp"))
    return found


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last name parts of the Linear-like layers, to tell users what `target_modules` can name."""
    names = {
        name.split(".")[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ in LINEAR_LIKE
    }
    return sorted(names)


# ------------------------------------------------------------------------------------------------ heads


def classifier_heads(model: nn.Module) -> Iterator[nn.Module]:
    """The freshly initialised classification heads of a sequence classifier (`CLASSIFIER_HEADS`)."""
    return (module for name, module in model.named_modules() if name.split(".")[-1] in CLASSIFIER_HEADS)


def output_head(model: nn.Module) -> nn.Module | None:
    """The layer that projects hidden states onto the vocabulary (a causal LM's lm_head)."""
    return model.get_output_embeddings()


def backbone(model: nn.Module) -> nn.Module:
    """The transformer under the head (LlamaModel in LlamaForCausalLM), adapters injected in place included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)
