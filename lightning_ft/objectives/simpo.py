"""SimPO (Meng et al., 2024): preference optimisation with no reference, on length-normalised log-probabilities,
as TRL's CPOTrainer computes it (loss_type="simpo").

With the mean token log-probabilities a_c, a_r of the chosen and rejected responses, per pair:
    -(1 - eps) log sigmoid(beta (a_c - a_r) - gamma) - eps log sigmoid(-(beta (a_c - a_r) - gamma))
plus, with sft_weight (TRL's cpo_alpha: "CPO-SimPO"), sft_weight x the chosen tokens' mean negative log-likelihood.
The rewards TRL logs are beta a_c and beta a_r.
"""

# No `from __future__ import annotations`: jsonargparse reads these annotations (see methods/base.py).

from dataclasses import dataclass

import torch.nn.functional as F

from lightning_ft.constants import Task
from lightning_ft.forward import Forward
from lightning_ft.objectives.base import Objective, Terms
from lightning_ft.objectives.dpo import LOGP_TERMS, REWARD_TERMS, reward_terms
from lightning_ft.objectives.pairs import check_settings, chosen_nll, mean_over, pair_logps, per_token


@dataclass
class SimPO(Objective):
    """Prefer the chosen response by a margin in mean token log-probability; no reference model runs.

    Attributes:
        beta: scale of the length-normalised reward; the paper uses 2.0-2.5 (10 for Gemma).
        gamma: the target reward margin; 0.5-1.5 is usual (TRL's simpo_gamma).
        label_smoothing: the chance a preference label is flipped, in [0, 0.5).
        sft_weight: weight of the chosen responses' negative log-likelihood (TRL's cpo_alpha); 0 for SimPO itself.
    """

    beta: float = 2.0
    gamma: float = 0.5
    label_smoothing: float = 0.0
    sft_weight: float = 0.0

    eval_logged = REWARD_TERMS + LOGP_TERMS
    unit = "pairs"

    def check(self, task: Task) -> None:
        check_settings(self, task)

    def terms(self, policy: Forward, batch: dict, training: bool) -> Terms:
        sums = pair_logps(policy.label_logps(batch), batch)
        mean = per_token(sums)
        margin = self.beta * (mean.chosen - mean.rejected) - self.gamma
        eps = self.label_smoothing
        loss = mean_over(-(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin), sums.real)
        if self.sft_weight:
            loss = loss + self.sft_weight * chosen_nll(sums)
        rewards = reward_terms(self.beta * mean.chosen, self.beta * mean.rejected, mean)
        return Terms(loss, int(sums.real.sum()), rewards)
