"""The causal-LM loss from the backbone's hidden states, scored only where there are labels, in chunks.

A model's own forward projects every position onto the whole vocabulary and upcasts those logits to fp32: with
response-only labels most positions carry no loss, and the (tokens x vocab) fp32 logits, kept for backward, are
often the largest tensor of a step (8 x 512 tokens x 128k vocab: 2 GiB). Here the backbone runs alone, the label
positions are picked out, and the output head and cross-entropy run over them in chunks, each chunk's gradients
computed right away, so only (chunk x vocab) logits ever exist (BENCHMARKS.md has what it gives).

Hand-written because the libraries that fuse the head with the loss (Liger, Apple's cut-cross-entropy) are Triton
kernels for GPUs, and TRL's is private to its trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_ft.anatomy import output_head
from lightning_ft.constants import IGNORE_INDEX

CHUNK_ROWS = 1024  # label positions per chunk: 1024 x 128k vocab x fp32 = 512 MiB at most, usually far less
# Config fields of models whose logits are not plain `hidden @ head.T` (softcapping, scaling): they keep their own.
LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


def plain_output_head(model: nn.Module) -> nn.Linear | None:
    """The model's output head when its logits are exactly `hidden @ weight.T` on whole (unsharded) weights, else None.

    Anything else keeps the model's own forward: a head with a bias, an adapter or hook of its own, logit scaling or
    softcapping, or weights that a sharded strategy gathers only inside the model's forward (FSDP2's DTensors,
    DeepSpeed ZeRO-3's partitioned parameters).
    """
    head = output_head(model)
    if type(head) is not nn.Linear or head.bias is not None or head._forward_hooks or head._forward_pre_hooks:
        return None
    if type(head.weight) is not nn.Parameter or hasattr(head.weight, "ds_id"):
        return None
    config = model.config.get_text_config()
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    return head


def head_cross_entropy(hidden: torch.Tensor, head: nn.Linear, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of `head(hidden)` against `labels` (already shifted), and the label count."""
    mask = labels != IGNORE_INDEX
    weight = head.weight
    if not torch.is_grad_enabled():  # evaluation: inputs that need no gradient make the forward skip working them out
        hidden, weight = hidden.detach(), weight.detach()
    return LinearCrossEntropy.apply(hidden[mask], weight, labels[mask]), int(mask.sum())


class LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)) computed CHUNK_ROWS rows at a time, the gradients of hidden and
    weight worked out chunk by chunk in the forward (softmax - one-hot), so backward only scales them.

    Same FLOPs as autograd's version (one matmul forward, one or two for the gradients); the matmuls run in the
    autocast dtype, as the head would under autocast, and the softmax in fp32.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            total = torch.zeros((), device=hidden.device, dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
            for start in range(0, hidden.size(0), CHUNK_ROWS):
                h, t = hidden[start : start + CHUNK_ROWS].to(dtype), targets[start : start + CHUNK_ROWS]
                logits = (h @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                grad_logits = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
                grad_logits[torch.arange(t.numel(), device=t.device), t] -= 1
                grad_logits = grad_logits.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start : start + CHUNK_ROWS] = grad_logits @ w
                if grad_weight is not None:
                    grad_weight += (grad_logits.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype)
        grad_weight = None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None


def plain_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the label tokens of full logits (already aligned with labels), and their count."""
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total, int((labels != IGNORE_INDEX).sum())
