"""Magnitude pruning of a Hugging Face model: unstructured (single weights) or structured (attention heads, MLP
neurons), and a report of what is left.

Only the transformer blocks' Linear layers are pruned: embeddings, the LM head and a classifier head keep every
weight (they are small next to the blocks and pruning them costs the most accuracy). Structured pruning removes the
same number of heads (neurons) in every block, so config.json still describes the model and it reloads with plain
`AutoModel*.from_pretrained`. Supported layouts: Llama-family attention (q/k/v/o_proj) and MLP (gate/up/down_proj),
and BERT-family attention (self.query/key/value + output.dense) and MLP (intermediate.dense + output.dense).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune
from transformers.pytorch_utils import prune_linear_layer

from lightning_ft.anatomy import attention_sublayers, block_linears, mlp_sublayers
from lightning_ft.errors import UserError

Kind = Literal["unstructured", "heads", "neurons"]
KINDS: tuple[str, ...] = ("unstructured", "heads", "neurons")


def prune_model(model: nn.Module, kind: Kind, amount: float) -> None:
    """Prune `model` in place: `amount` (0 < amount < 1) of its block weights, heads or neurons."""
    check_request(kind, amount)
    {"unstructured": prune_unstructured, "heads": prune_heads, "neurons": prune_neurons}[kind](model, amount)


def check_request(kind: str, amount: float) -> None:
    """Refuse an unknown kind or an amount outside (0, 1) before any model is loaded."""
    if kind not in KINDS:
        raise UserError(f"--kind {kind}: choose from {', '.join(KINDS)}")
    if not 0 < amount < 1:
        raise UserError(f"--amount {amount:g}: the fraction to prune, between 0 and 1 (exclusive)")


# ------------------------------------------------------------------------------------------------ unstructured


def prune_unstructured(model: nn.Module, amount: float) -> None:
    """Zero the `amount` of each block Linear weight with the smallest |w| (L1 magnitude, layer by layer).

    torch's l1_unstructured zeroes exactly round(amount * numel) weights per layer; prune.remove then folds the
    mask into the weight, so the model keeps plain `weight` parameters (what save_pretrained and training expect).
    """
    layers = list(block_linears(model))
    if not layers:
        raise UserError(f"{type(model).__name__}: no Linear layers inside transformer blocks to prune")
    for _, layer in layers:
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")


# ------------------------------------------------------------------------------------------------ structured


def head_layout(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) from a Hugging Face config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def units_to_remove(model: nn.Module, kind: Kind, amount: float) -> int:
    """How many heads (key/value groups) or neurons per block `amount` removes: at least one, never all."""
    if kind == "neurons":
        units, what = model.config.intermediate_size, "MLP neurons"
    else:
        heads, units, _ = head_layout(model.config)
        what = "key/value head groups" if heads > units else "attention heads"
    count = round(amount * units)
    if not 0 < count < units:
        raise UserError(
            f"--amount {amount} removes {count} of the {units} {what} per block: it must remove 1 to {units - 1}"
        )
    return count


def all_but_weakest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the units to keep: all but the `count` with the smallest scores."""
    keep = torch.topk(scores, len(scores) - count).indices
    return keep.sort().values


def shrink(parent: nn.Module, name: str, keep: torch.Tensor, dim: int) -> None:
    """Replace `parent.name` (a Linear) by one that keeps only the rows (dim 0) or columns (dim 1) in `keep`."""
    layer = getattr(parent, name)
    # transformers' helper builds the new layer in the default dtype; keep the old one's dtype and trainability.
    smaller = prune_linear_layer(layer, keep, dim).to(layer.weight.dtype)
    smaller.requires_grad_(layer.weight.requires_grad)
    setattr(parent, name, smaller)


def unit_rows(unit_size: int, keep: torch.Tensor) -> torch.Tensor:
    """Row indices of the kept units of `unit_size` consecutive rows each (a head's rows in q/k/v)."""
    return (keep[:, None] * unit_size + torch.arange(unit_size, device=keep.device)).flatten()


def squared_norms(weight: torch.Tensor, units: int, dim: int) -> torch.Tensor:
    """Sum of squares of each of `units` equal slices of `weight` along `dim` (rows: 0, columns: 1)."""
    slices = weight.detach().float().transpose(0, dim).reshape(units, -1)
    return slices.pow(2).sum(dim=1)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(layout, module) of every self-attention (anatomy.py's layouts: "llama" or "bert"), or one clear error."""
    return known(
        attention_sublayers(model),
        f"{type(model).__name__}: --kind heads knows Llama-style (q_proj/k_proj/v_proj/o_proj) and BERT-style "
        "attention; use --kind unstructured",
    )


def known(found: list, refusal: str) -> list:
    """`found`, or a UserError saying `refusal` when the model has no layout pruning knows."""
    if not found:
        raise UserError(refusal)
    return found


def prune_heads(model: nn.Module, amount: float) -> None:
    """Remove `amount` of the attention heads in every block, those with the smallest weights.

    A head's magnitude is the L2 norm of its q/k/v rows and its output-projection columns. With grouped-query
    attention the unit is a key/value head together with the query heads that share it, so the grouping survives.
    """
    config = model.config
    heads, kv_heads, head_dim = head_layout(config)
    group = heads // kv_heads
    remove = units_to_remove(model, "heads", amount)
    for layout, attention in attention_modules(model):
        if layout == "llama":
            q, k, v, o = attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj
        else:
            q, k, v, o = attention.self.query, attention.self.key, attention.self.value, attention.output.dense
        scores = squared_norms(k.weight, kv_heads, 0) + squared_norms(v.weight, kv_heads, 0)
        scores += (squared_norms(q.weight, heads, 0) + squared_norms(o.weight, heads, 1)).view(kv_heads, group).sum(1)
        keep_kv = all_but_weakest(scores.sqrt(), remove)
        keep_q = unit_rows(group, keep_kv)  # the query heads of the kept groups
        q_rows, kv_rows = unit_rows(head_dim, keep_q), unit_rows(head_dim, keep_kv)
        if layout == "llama":
            shrink(attention, "q_proj", q_rows, 0)
            shrink(attention, "k_proj", kv_rows, 0)
            shrink(attention, "v_proj", kv_rows, 0)
            shrink(attention, "o_proj", q_rows, 1)
            target = attention
        else:
            for name in ("query", "key", "value"):
                shrink(attention.self, name, q_rows, 0)
            shrink(attention.output, "dense", q_rows, 1)
            target = attention.self
        # transformers reshapes with -1 heads, but some attention classes keep the counts as attributes too
        kept_heads = len(keep_q)
        for attribute, value in (
            ("num_heads", kept_heads),
            ("num_attention_heads", kept_heads),
            ("num_key_value_heads", len(keep_kv)),
            ("all_head_size", kept_heads * head_dim),
        ):
            if hasattr(target, attribute):
                setattr(target, attribute, value)
    config.num_attention_heads = (kv_heads - remove) * group
    if getattr(config, "num_key_value_heads", None):
        config.num_key_value_heads = kv_heads - remove
    config.head_dim = head_dim  # no longer hidden_size // num_attention_heads


def head_count_reloads(model: nn.Module) -> bool:
    """Whether a model with fewer heads can be saved and reloaded: transformers 5's BERT derives the head size from
    hidden_size / num_attention_heads, so fewer heads would reload as bigger ones (Llama reads config.head_dim)."""
    return all(layout == "llama" for layout, _ in attention_modules(model))


def mlp_modules(model: nn.Module) -> list[tuple[nn.Module, list[str], nn.Module, str]]:
    """(parent of the input projections, their names, parent of the output projection, its name) per block."""
    return known(
        mlp_sublayers(model),
        f"{type(model).__name__}: --kind neurons knows Llama-style (gate/up/down_proj) and BERT-style "
        "(intermediate.dense + output.dense) MLPs; use --kind unstructured",
    )


def prune_neurons(model: nn.Module, amount: float) -> None:
    """Remove `amount` of the MLP's intermediate neurons in every block, those with the smallest weights.

    A neuron's magnitude is the L2 norm of its input rows (gate and up projections) and its output column.
    """
    size = model.config.intermediate_size
    remove = units_to_remove(model, "neurons", amount)
    for in_parent, in_names, out_parent, out_name in mlp_modules(model):
        scores = squared_norms(getattr(out_parent, out_name).weight, size, 1)
        for name in in_names:
            scores += squared_norms(getattr(in_parent, name).weight, size, 0)
        keep = all_but_weakest(scores.sqrt(), remove)
        for name in in_names:
            shrink(in_parent, name, keep, 0)
        shrink(out_parent, out_name, keep, 1)
        if hasattr(in_parent, "intermediate_size"):
            in_parent.intermediate_size = len(keep)
    model.config.intermediate_size = size - remove


# ------------------------------------------------------------------------------------------------ report


def sparsity_report(model: nn.Module) -> dict:
    """Exact zeros of every block Linear weight (the pruned layers), over all of them, and the parameter count."""
    layers = {}
    for name, layer in block_linears(model):
        weight = layer.weight.detach()
        zeros, total = int((weight == 0).sum()), weight.numel()
        layers[name] = {"shape": list(weight.shape), "zeros": zeros, "total": total, "sparsity": zeros / total}
    zeros, total = sum(v["zeros"] for v in layers.values()), sum(v["total"] for v in layers.values())
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "pruned_layer_weights": total,
        "pruned_layer_zeros": zeros,
        "sparsity": zeros / total if total else 0.0,
        "layers": layers,
    }
