"""Does the exported model compute what the trained one did? A probe batch through both, compared.

An export that loads but computes something else (a merge that dropped the LoRA scaling, an adapter saved
without its classifier head, a graph traced with a shape baked in) is the failure users meet only in production;
this catches it while the old output is still in place.
"""

from __future__ import annotations

import torch
from torch import nn

# How close logits must be, relative to their largest magnitude, for an export in this dtype to count as equal to
# the trained model (measured: a 2-layer Llama in fp32 agrees to ~1e-6; bf16 rounds weights to 8 bits of
# mantissa, ~0.4% each, and the errors add up over layers).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
PROBE_SHAPE = (2, 16)


def probe_inputs(vocab_size: int, shape: tuple[int, int] = PROBE_SHAPE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids drawn at random from the vocabulary (seeded), every position attended."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, shape, generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@torch.no_grad()
def logits(model: nn.Module, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits in fp32, on its own device (no cache: a prefix or a cache would change nothing here, and
    packed-style position handling stays off)."""
    model.eval()
    device = next(model.parameters()).device
    kwargs = {name: tensor.to(device) for name, tensor in inputs.items()}
    if task == "causal_lm":
        kwargs["use_cache"] = False
    return model(**kwargs).logits.float().cpu()


def compare(reference: torch.Tensor, exported: torch.Tensor) -> dict[str, float]:
    """Largest difference relative to the largest logit, and how often both pick the same top class / token."""
    scale = reference.abs().max().clamp_min(1.0)
    return {
        "max_abs_diff": float((reference - exported).abs().max()),
        "relative_diff": float((reference - exported).abs().max() / scale),
        "top1_agreement": float((reference.argmax(-1) == exported.argmax(-1)).float().mean()),
    }
