"""ORPO (Hong et al., 2024): odds-ratio preference optimisation, supervised and aligned in one loss, with no
reference model, as TRL's ORPOTrainer computes it.

With the mean token log-probabilities a_c, a_r of the chosen and rejected responses, the log odds ratio is
    l = (a_c - a_r) - (log(1 - exp a_c) - log(1 - exp a_r))
and the loss is the chosen sequences' negative log-likelihood - beta x mean log sigmoid(l). The NLL runs over the
whole chosen sequence, prompt included, as the paper's code and TRL compute it (`nll_on_prompt`); the rewards TRL
logs are beta a_c and beta a_r.
"""

# No `from __future__ import annotations`: jsonargparse reads these annotations (see methods/base.py).

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_ft.constants import Task
from lightning_ft.forward import Forward
from lightning_ft.objectives.base import Objective, Terms
from lightning_ft.objectives.dpo import LOGP_TERMS, REWARD_TERMS, reward_terms
from lightning_ft.objectives.pairs import (
    check_settings,
    chosen_nll,
    mean_over,
    pair_logps,
    per_token,
    whole_sequence_labels,
)


@dataclass
class ORPO(Objective):
    """Fine-tune on the chosen responses while pushing their odds above the rejected ones'; no reference model runs,
    so ORPO starts from a base model (no SFT stage first).

    Attributes:
        beta: weight of the odds-ratio term against the NLL (the paper's lambda); 0.1 is usual, 0.05-0.5 the range.
        nll_on_prompt: the NLL term covers the prompt tokens too (the paper's code, TRL); False: only the chosen
            response, as supervised fine-tuning with response-only loss.
    """

    beta: float = 0.1
    nll_on_prompt: bool = True

    eval_logged = (*REWARD_TERMS, *LOGP_TERMS, "nll_loss", "log_odds_ratio", "log_odds_chosen")
    unit = "pairs"

    def check(self, task: Task) -> None:
        check_settings(self, task)

    def terms(self, policy: Forward, batch: dict, training: bool) -> Terms:
        whole = {**batch, "labels": whole_sequence_labels(batch)}
        token_logps = policy.label_logps(whole if self.nll_on_prompt else batch)
        sums = pair_logps(token_logps, batch)
        mean = per_token(sums)
        nll = chosen_nll(pair_logps(token_logps, whole)._replace(real=sums.real) if self.nll_on_prompt else sums)
        log_odds = (mean.chosen - mean.rejected) - (log1mexp(mean.chosen) - log1mexp(mean.rejected))
        ratio = F.logsigmoid(log_odds)
        loss = nll - self.beta * mean_over(ratio, sums.real)
        logged = reward_terms(self.beta * mean.chosen, self.beta * mean.rejected, mean)
        logged |= {
            "nll_loss": nll.detach(),
            "log_odds_ratio": mean_over(ratio.detach(), sums.real),
            "log_odds_chosen": mean_over(log_odds.detach(), sums.real),
        }
        return Terms(loss, int(sums.real.sum()), logged)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation near 0 (Maechler, 2012; the branch TRL takes too)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))
