"""Knowledge distillation (Hinton et al., 2015): a frozen teacher's soft predictions as a second training signal.

Per label token (causal LM) or example (classification), with teacher logits t, student logits s, temperature T:
    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * cross_entropy(s, label)
T > 1 softens both distributions so the teacher's ranking of the wrong answers carries signal; T^2 keeps the soft
term's gradients on the hard term's scale as T changes.
"""

# No `from __future__ import annotations`: jsonargparse reads these annotations (see methods/base.py).

import os
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from lightning_ft.constants import IGNORE_INDEX, DType, Task
from lightning_ft.errors import UserError, first_line
from lightning_ft.forward import Forward
from lightning_ft.loading import check_model_source, load_model, load_tokenizer
from lightning_ft.objectives.base import Objective, Terms

FLAG = "--model.objective"


@dataclass
class Distillation(Objective):
    """Train the student on a frozen teacher's predictions as well as on the labels. The training loss mixes both;
    val_loss stays the plain cross-entropy (comparable with runs without a teacher) and val_kd is the KL to the
    teacher at temperature 1.

    Attributes:
        teacher: Hugging Face model directory or hub id of the teacher, for the same task, with the student's
            tokenizer (and, for classification, the same labels in the same order).
        temperature: T, softening both distributions; 1-4 is usual (2 is a good start), 1 compares them as they are.
        alpha: weight of the distillation term, 1 - alpha that of the plain cross-entropy; 0.5-0.9 is usual.
        dtype: the teacher's weights; default bfloat16 when the trainer computes in bf16 (it is frozen), else float32.
    """

    teacher: str
    temperature: float = 2.0
    alpha: float = 0.5
    dtype: DType | None = None

    eval_logged = ("kd",)
    loss_is_nll = True  # at evaluation the loss is the plain cross-entropy

    def check(self, task: Task) -> None:
        try:
            check_model_source(self.teacher)
        except UserError:
            raise UserError(f"{FLAG}.teacher: no such directory: {self.teacher}") from None
        if not (0.0 < self.temperature < float("inf")):
            raise UserError(f"{FLAG}.temperature must be a positive number, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"{FLAG}.alpha must be in [0, 1], got {self.alpha}")

    def configure(
        self, policy: Forward, tokenizer, *, dtype: DType, trust_remote_code: bool, reference: Forward | None = None
    ) -> None:
        teacher = load_teacher(
            self, policy.model, tokenizer, policy.task, dtype=self.dtype or dtype, trust_remote_code=trust_remote_code
        )
        # In a tuple, and no field: the teacher stays out of hyperparameters, checkpoints, parameter counts, the
        # optimizer and train()/eval() switches, and does not move with the module (terms moves it).
        self._teacher = (Forward(teacher, policy.task),)

    def terms(self, policy: Forward, batch: dict, training: bool) -> Terms:
        """Training: the mixed loss at temperature T, logging both parts; evaluation: the cross-entropy, logging
        the KL as it is (temperature 1)."""
        student, labels = policy.label_logits(batch)
        (teacher,) = self._teacher
        teacher.follow(batch)
        with torch.no_grad():  # in the step's autocast, like the student
            teacher_logits, _ = teacher.label_logits(batch)
        temperature = self.temperature if training else 1.0
        sums = distillation_loss(student, teacher_logits, labels, temperature, self.alpha)
        count = max(sums.count, 1)
        logits = student if policy.task == "sequence_classification" else None
        if training:
            return Terms(sums.loss / count, sums.count, {"kd_loss": sums.kd / count, "ce_loss": sums.ce / count})
        return Terms(sums.ce / count, sums.count, {"kd": sums.kd / count}, logits)


class DistillationSums(NamedTuple):
    """Sums over the counted label tokens (examples)."""

    loss: torch.Tensor  # alpha * kd + (1 - alpha) * ce
    kd: torch.Tensor  # T^2 * KL(teacher || student) at temperature T
    ce: torch.Tensor  # cross-entropy against the labels (temperature 1)
    count: int


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> DistillationSums:
    """The mixed loss over the positions whose label is not IGNORE_INDEX (logits already aligned with labels), in fp32.

    Vocabularies padded past the tokenizer (load_teacher has checked that only padding differs) are compared over
    their common columns; the cross-entropy takes the student's own full logits, as the plain loss does.
    """
    mask = labels != IGNORE_INDEX
    student, teacher, labels = student_logits[mask].float(), teacher_logits[mask].float(), labels[mask]
    ce = F.cross_entropy(student, labels, reduction="sum")
    width = min(student.size(-1), teacher.size(-1))
    log_student = F.log_softmax(student[:, :width] / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher[:, :width] / temperature, dim=-1)
    kd = F.kl_div(log_student, log_teacher, log_target=True, reduction="sum") * temperature**2
    return DistillationSums(alpha * kd + (1 - alpha) * ce, kd, ce, int(mask.sum()))


def load_teacher(
    settings: Distillation,
    student: PreTrainedModel,
    student_tokenizer: PreTrainedTokenizerBase,
    task: Task,
    *,
    dtype: DType,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """The teacher, frozen and in eval mode, once it is checked to score what the student scores: the same tokens
    (it reads the student's input ids, and a causal LM's predictions are compared token by token) and, for
    classification, the same classes."""
    where = f"{FLAG}.teacher {settings.teacher}"
    tokenizer = load_tokenizer(settings.teacher, trust_remote_code)
    if tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise UserError(
            f"{where}: another tokenizer than the student's ({len(tokenizer)} tokens, the student's "
            f"{len(student_tokenizer)}); distillation needs both models to share one"
        )
    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(settings.teacher), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{where}: cannot read its config: {first_line(err)}") from err
    if task == "causal_lm":
        # Vocabularies padded to a round size (Qwen2.5 7B: 152064, 0.5B: 151936) differ only past the tokenizer.
        widths = config.get_text_config().vocab_size, student.config.get_text_config().vocab_size
        if widths[0] != widths[1] and min(widths) < len(tokenizer):
            raise UserError(f"{where}: vocabulary size {widths[0]}, the student's {widths[1]}")
        num_labels = None
    else:
        num_labels = config.num_labels
        if num_labels != student.config.num_labels:
            raise UserError(f"{where}: {num_labels} labels, the student has {student.config.num_labels}")
        names = [label_names(c) for c in (config, student.config)]
        if all(names) and names[0] != names[1]:
            raise UserError(f"{where}: labels {names[0]}, the student's {names[1]} (same names, same order)")
    teacher = load_model(
        settings.teacher,
        task,
        dtype=dtype,
        num_labels=num_labels,
        pad_token_id=student_tokenizer.pad_token_id,
        trust_remote_code=trust_remote_code,
    )
    return teacher.requires_grad_(False).eval()


def label_names(config) -> list[str] | None:
    """The class names in id order, or None for transformers' placeholders (LABEL_0, LABEL_1, ...)."""
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    return None if all(re.fullmatch(r"LABEL_\d+", name) for name in names) else names
