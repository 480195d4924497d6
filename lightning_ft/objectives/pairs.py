"""What the preference objectives share: the summed log-probabilities of each pair's chosen and rejected response.

A batch of preference pairs numbers its sequences in `sequence_ids` (data/batching.py): pair k's chosen response is
sequence 2k, its rejected one 2k + 1, whether each has a row of its own or many pairs share a packed row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lightning_ft.constants import IGNORE_INDEX
from lightning_ft.errors import UserError
from lightning_ft.forward import Forward


class PairLogps(NamedTuple):
    """Per pair: the responses' summed token log-probabilities, their token counts, and whether it counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    real: torch.Tensor  # False for the copies that even out a pass across processes (they carry no labels)


def pair_logps(token_logps: torch.Tensor, batch: dict) -> PairLogps:
    """Sums of `token_logps` (batch x tokens - 1, aligned with labels[:, 1:]) over each response's label tokens."""
    if "sequence_ids" not in batch:
        raise UserError("a preference objective needs preference data: set --data.format preference")
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    sequence = batch["sequence_ids"][:, 1:][mask]  # the label at position t + 1 belongs to token t + 1's sequence
    count = int(batch["sequence_ids"].max()) + 1
    sums = torch.zeros(count, dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, sequence, token_logps[mask]
    )
    tokens = torch.zeros(count, dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, sequence, torch.ones_like(sequence, dtype=token_logps.dtype)
    )
    chosen_tokens, rejected_tokens = tokens[0::2], tokens[1::2]
    return PairLogps(
        sums[0::2], sums[1::2], chosen_tokens, rejected_tokens, (chosen_tokens > 0) & (rejected_tokens > 0)
    )


def per_token(sums: PairLogps) -> PairLogps:
    """The responses' mean token log-probabilities (SimPO's and ORPO's length-normalised ones)."""
    return sums._replace(
        chosen=sums.chosen / sums.chosen_tokens.clamp(min=1), rejected=sums.rejected / sums.rejected_tokens.clamp(min=1)
    )


def whole_sequence_labels(batch: dict) -> torch.Tensor:
    """Labels on every token of every sequence but its first (nothing in the sequence predicts it), prompts too:
    for objectives with a term on whole sequences (ORPO's NLL)."""
    sequence = batch["sequence_ids"]
    follows = torch.zeros_like(sequence, dtype=torch.bool)
    follows[:, 1:] = (sequence[:, 1:] == sequence[:, :-1]) & (sequence[:, 1:] >= 0)
    return torch.where(follows, batch["input_ids"], IGNORE_INDEX)


def policy_and_reference(policy: Forward, reference: Forward, batch: dict) -> tuple[PairLogps, PairLogps]:
    """The policy's pair log-probabilities (with gradients) and the reference's (precomputed ones if the batch
    carries them: objectives/precomputed.py)."""
    mine = pair_logps(policy.label_logps(batch), batch)
    if "reference_logps" in batch:
        precomputed = batch["reference_logps"].to(mine.chosen.dtype)
        return mine, mine._replace(chosen=precomputed[:, 0], rejected=precomputed[:, 1])
    reference.follow(batch)
    with torch.no_grad():
        theirs = pair_logps(reference.label_logps(batch), batch)
    return mine, theirs


def keep_reference(objective, policy: Forward, reference: Forward) -> None:
    """Keep the reference's forward passes (in a tuple: no field, so no hyperparameter); with `disable_dropout`,
    switch the policy's dropout off (as TRL does by default): the log-ratios then compare the same computation."""
    objective._reference = (reference,)
    if objective.disable_dropout:
        for module in policy.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0


def check_settings(objective, task: str) -> None:
    """What every preference objective refuses: another task than causal_lm, beta <= 0, label smoothing out of
    [0, 0.5) (a flip chance of half or more turns the preference over)."""
    if task != "causal_lm":
        raise UserError(f"--model.objective {type(objective).__name__} trains a causal LM (--model.task causal_lm)")
    if not objective.beta > 0:
        raise UserError(f"--model.objective.beta must be positive, got {objective.beta}")
    if not 0.0 <= getattr(objective, "label_smoothing", 0.0) < 0.5:
        raise UserError(f"--model.objective.label_smoothing must be in [0, 0.5), got {objective.label_smoothing}")


def chosen_nll(logps: PairLogps) -> torch.Tensor:
    """The mean negative log-likelihood over every chosen response token of the batch (TRL's "sft" / CPO term)."""
    tokens = torch.where(logps.real, logps.chosen_tokens, 0.0).sum().clamp(min=1)
    return -torch.where(logps.real, logps.chosen, 0.0).sum() / tokens


def mean_over(values: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The mean over the pairs that count (0 when none do)."""
    return torch.where(real, values, 0.0).sum() / real.sum().clamp(min=1)
