"""Cross-entropy on the label tokens (causal LM: the response tokens, or every token of plain text) or on the class
of each example: supervised fine-tuning's loss, and the default objective."""

from dataclasses import dataclass

from lightning_ft.forward import Forward
from lightning_ft.loss import plain_cross_entropy
from lightning_ft.objectives.base import Objective, Terms


@dataclass
class CrossEntropy(Objective):
    """The mean negative log-likelihood of the labels: per label token (causal LM) or per example (classification)."""

    loss_is_nll = True

    def terms(self, policy: Forward, batch: dict, training: bool) -> Terms:
        if policy.task == "sequence_classification":  # one forward for the loss and the metrics' predictions
            logits = policy.logits(batch)
            total, count = plain_cross_entropy(logits, batch["labels"])
            return Terms(total / max(count, 1), count, {}, logits)
        total, count = policy.cross_entropy(batch)
        return Terms(total / max(count, 1), count, {})
