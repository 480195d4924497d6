"""KTO (Ethayarajh et al., 2024): alignment from unpaired feedback, each completion marked desirable or not, as
TRL's KTOTrainer computes it.

With the log-ratio rho = logp(y|x) - ref(y|x) of each completion and the reference point z, the policy's KL
divergence from the reference estimated on mismatched completions (data/formats/unpaired.py) over the batch,
detached and clamped at 0:
    desirable     w_d (1 - sigmoid(beta (rho - z)))
    undesirable   w_u (1 - sigmoid(beta (z - rho)))
averaged over the batch's completions (loss_type apo_zero_unpaired: z = 0, and sigmoid(beta rho) for undesirable
ones). Training on several processes, z is estimated over the global batch, as TRL gathers it; at evaluation each
batch's own estimate (processes may evaluate unequal numbers of batches). The rewards TRL logs are beta rho, as
means over the desirable ("chosen") and undesirable ("rejected") completions.
"""

# No `from __future__ import annotations`: jsonargparse reads these annotations (see methods/base.py).

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from lightning_ft.constants import DType, Task
from lightning_ft.errors import UserError
from lightning_ft.forward import Forward
from lightning_ft.objectives.base import Objective, Terms
from lightning_ft.objectives.pairs import check_settings, keep_reference, mean_over, policy_and_reference


@dataclass
class KTO(Objective):
    """Raise the likelihood of desirable completions and lower that of undesirable ones, relative to the reference.

    Attributes:
        beta: how far the policy may move from the reference (higher: less); 0.1 is usual.
        desirable_weight / undesirable_weight: the losses' weights by label; with unequal counts, keep
            desirable_weight x desirable count / (undesirable_weight x undesirable count) in [1, 4/3] (paper, eq. 8).
        loss_type: kto, or apo_zero_unpaired (APO-zero: no reference point, for completions better than the
            model's own).
        reference: live (a pass through the reference each step) or precomputed (once before training, cached on
            disk with the data: objectives/precomputed.py).
        disable_dropout: switch the policy's dropout off (as TRL does by default).
    """

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    disable_dropout: bool = True
    reference: Literal["live", "precomputed"] = "live"

    eval_logged = ("rewards_chosen", "rewards_rejected", "rewards_margins", "logps_chosen", "logps_rejected", "kl")
    needs_reference = True
    unit = "completions"

    def check(self, task: Task) -> None:
        check_settings(self, task)
        if not (self.desirable_weight > 0 and self.undesirable_weight > 0):
            raise UserError("--model.objective.desirable_weight and undesirable_weight must be positive")

    def configure(
        self, policy: Forward, tokenizer, *, dtype: DType, trust_remote_code: bool, reference: Forward | None = None
    ) -> None:
        keep_reference(self, policy, reference)

    def terms(self, policy: Forward, batch: dict, training: bool) -> Terms:
        if "desirable" not in batch:
            raise UserError("--model.objective KTO needs unpaired feedback: set --data.format unpaired")
        # Each example's sequences: its completion ("chosen" below), then the mismatched one (for the KL estimate).
        mine, ref = policy_and_reference(policy, self._reference[0], batch)
        real, desirable = mine.real, batch["desirable"].to(mine.real.device)
        kl = self.reference_point(mine.rejected.detach() - ref.rejected, real, training)
        ratio = mine.chosen - ref.chosen
        if self.loss_type == "kto":
            losses = torch.where(
                desirable,
                self.desirable_weight * (1 - torch.sigmoid(self.beta * (ratio - kl))),
                self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - ratio))),
            )
        else:
            losses = torch.where(
                desirable,
                self.desirable_weight * (1 - torch.sigmoid(self.beta * ratio)),
                self.undesirable_weight * torch.sigmoid(self.beta * ratio),
            )
        rewards, chosen, rejected = self.beta * ratio.detach(), real & desirable, real & ~desirable
        logged = {
            "rewards_chosen": mean_over(rewards, chosen),
            "rewards_rejected": mean_over(rewards, rejected),
            "logps_chosen": mean_over(mine.chosen.detach(), chosen),
            "logps_rejected": mean_over(mine.chosen.detach(), rejected),
            "kl": kl,
        }
        logged["rewards_margins"] = logged["rewards_chosen"] - logged["rewards_rejected"]
        desirables, undesirables = int(chosen.sum()), int(rejected.sum())
        weights = {  # what each term is a mean over (kl, as the loss: every completion)
            "rewards_chosen": desirables,
            "logps_chosen": desirables,
            "rewards_rejected": undesirables,
            "logps_rejected": undesirables,
            "rewards_margins": desirables + undesirables if desirables and undesirables else 0,
        }
        return Terms(mean_over(losses, real), int(real.sum()), logged, weights=weights)

    def reference_point(self, kl_ratios: torch.Tensor, real: torch.Tensor, training: bool) -> torch.Tensor:
        """z: the mean log-ratio of the mismatched completions, over the global batch when training, clamped at 0."""
        if self.loss_type != "kto":
            return torch.zeros((), device=real.device)
        total = torch.stack([torch.where(real, kl_ratios, 0.0).sum(), real.sum().to(kl_ratios.dtype)])
        if training and dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        return (total[0] / total[1].clamp(min=1)).clamp(min=0)
