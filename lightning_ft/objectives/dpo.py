"""Direct Preference Optimization (Rafailov et al., 2023) and its variants, exactly as TRL's DPOTrainer computes them.

With the policy's and the reference's summed log-probabilities of the chosen (c) and rejected (r) responses, the
log-ratios rho_c = logp_c - ref_c, rho_r = logp_r - ref_r and delta = rho_c - rho_r, per pair:
    sigmoid  -(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)   (eps > 0: conservative DPO)
    hinge    relu(1 - beta delta)                                                (SLiC)
    ipo      (rho_c / |c| - rho_r / |r| - 1 / (2 beta))^2                        (IPO, per-token log-ratios)
    robust   (-(1 - eps) log sigmoid(beta delta) + eps log sigmoid(-beta delta)) / (1 - 2 eps)   (rDPO)
plus, with rpo_alpha, rpo_alpha x the mean negative log-likelihood of the chosen responses' tokens (RPO).
The rewards TRL logs are beta rho_c and beta rho_r.
"""

# No `from __future__ import annotations`: jsonargparse reads these annotations (see methods/base.py).

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lightning_ft.constants import DType, Task
from lightning_ft.forward import Forward
from lightning_ft.objectives.base import Objective, Terms
from lightning_ft.objectives.pairs import check_settings, chosen_nll, keep_reference, mean_over, policy_and_reference

REWARD_TERMS = ("rewards_chosen", "rewards_rejected", "rewards_accuracies", "rewards_margins")
LOGP_TERMS = ("logps_chosen", "logps_rejected")


@dataclass
class DPO(Objective):
    """Prefer the chosen response over the rejected one, relative to the reference (the model before training).

    Attributes:
        beta: how far the policy may move from the reference (higher: less); 0.1 is usual, 0.01-0.5 the range.
            For ipo it is the regularisation tau.
        loss_type: sigmoid (DPO), hinge, ipo or robust.
        label_smoothing: the chance a preference label is flipped (sigmoid: conservative DPO; robust: rDPO); in
            [0, 0.5).
        rpo_alpha: weight of a negative log-likelihood term on the chosen responses (RPO); None for none.
        reference: live (a pass through the reference each step) or precomputed (once before training, cached on
            disk with the data: objectives/precomputed.py).
        disable_dropout: switch the policy's dropout off (as TRL does by default): the log-ratios then compare
            the same computation, and the reference pass matches the policy's.
    """

    beta: float = 0.1
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust"] = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float | None = None
    disable_dropout: bool = True
    reference: Literal["live", "precomputed"] = "live"

    eval_logged = REWARD_TERMS + LOGP_TERMS
    needs_reference = True
    unit = "pairs"

    def check(self, task: Task) -> None:
        check_settings(self, task)

    def configure(
        self, policy: Forward, tokenizer, *, dtype: DType, trust_remote_code: bool, reference: Forward | None = None
    ) -> None:
        keep_reference(self, policy, reference)

    def terms(self, policy: Forward, batch: dict, training: bool) -> Terms:
        mine, ref = policy_and_reference(policy, self._reference[0], batch)
        chosen_ratio, rejected_ratio = mine.chosen - ref.chosen, mine.rejected - ref.rejected
        per_pair = self.pair_loss(chosen_ratio, rejected_ratio, mine.chosen_tokens, mine.rejected_tokens)
        real = mine.real
        loss = mean_over(per_pair, real)
        if self.rpo_alpha is not None:
            loss = loss + self.rpo_alpha * chosen_nll(mine)
        return Terms(loss, int(real.sum()), reward_terms(self.beta * chosen_ratio, self.beta * rejected_ratio, mine))

    def pair_loss(self, chosen_ratio, rejected_ratio, chosen_tokens, rejected_tokens) -> torch.Tensor:
        beta, eps = self.beta, self.label_smoothing
        delta = chosen_ratio - rejected_ratio
        if self.loss_type == "sigmoid":
            return -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
        if self.loss_type == "hinge":
            return torch.relu(1 - beta * delta)
        if self.loss_type == "ipo":
            per_token = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
            return (per_token - 1 / (2 * beta)) ** 2
        return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)


def reward_terms(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, logps) -> dict[str, torch.Tensor]:
    """TRL's rewards/* and logps/* metrics, as means over the pairs that count."""
    chosen_rewards, rejected_rewards, real = chosen_rewards.detach(), rejected_rewards.detach(), logps.real
    values = {
        "rewards_chosen": chosen_rewards,
        "rewards_rejected": rejected_rewards,
        "rewards_accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards_margins": chosen_rewards - rejected_rewards,
        "logps_chosen": logps.chosen.detach(),
        "logps_rejected": logps.rejected.detach(),
    }
    return {name: mean_over(value, real) for name, value in values.items()}
