"""FineTuneModule: one LightningModule for every base model, task and adaptation method."""

from __future__ import annotations

from copy import deepcopy as copy_module
from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from lightning_ft.anatomy import transformer_blocks
from lightning_ft.checkpoints import (
    base_fingerprint,
    check_checkpoint,
    plain_hyperparameters,
    rng_states,
    set_rng_states,
)
from lightning_ft.constants import DType, Task
from lightning_ft.distributed import all_gather_objects, shard_transformer_blocks
from lightning_ft.errors import UserError
from lightning_ft.forward import Forward
from lightning_ft.loading import check_model_dir, load_model, load_tokenizer
from lightning_ft.methods import Full, Method, count_parameters
from lightning_ft.objectives import CrossEntropy, Objective, Terms
from lightning_ft.objectives.precomputed import PrecomputedReference, reference_key
from lightning_ft.optim import Optim, build_optimizer, build_scheduler
from lightning_ft.precision import c_compiler


class FineTuneModule(LightningModule):
    """Fine-tune a Hugging Face causal LM or sequence classifier with any `Method`, on any `Objective`.

    Args:
        model_name_or_path: local Hugging Face model directory or hub id.
        task: "causal_lm" (next-token loss on label tokens) or "sequence_classification".
        method: how the model adapts (Full, LoRA, QLoRA, PrefixTuning, BottleneckAdapter); default Full().
        labels: class names for sequence_classification (their order fixes the class ids).
        num_labels: number of classes when the data labels are plain ids and no names are given.
        dtype: dtype the base weights load in. Default: bfloat16 when the method freezes them and the trainer
            computes in bf16 (half the memory, no cast per step), else float32; "auto" takes the checkpoint's own.
        gradient_checkpointing: recompute activations in backward (about 30% slower, far less memory).
        trust_remote_code: allow the model directory to run its own Python code. Only for sources you trust.
        compile: compile each transformer block with torch.compile (one compilation serves every block): about a
            minute up front, so only long runs can gain (BENCHMARKS.md: slower end to end on 110 CPU steps).
        objective: what the loss is (CrossEntropy, Distillation, DPO, ORPO, SimPO, KTO); default CrossEntropy(),
            supervised fine-tuning.
        init_from: a lightning-ft checkpoint of this base model to start from (an SFT run before DPO): its model,
            with its adapter merged, is what this run's method adapts, and the reference of preference objectives.
        optim: optimizer and learning-rate schedule.
    """

    def __init__(
        self,
        model_name_or_path: str,
        task: Task = "causal_lm",
        method: Method | None = None,
        labels: list[str] | None = None,
        num_labels: int | None = None,
        dtype: DType | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        compile: bool = False,
        objective: Objective | None = None,
        init_from: str | None = None,
        optim: Optim = Optim(),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_model_dir(model_name_or_path)
        self.method = method or Full()
        self.method.check(gradient_checkpointing=gradient_checkpointing)
        if compile and not torch.cuda.is_available() and not c_compiler():
            raise UserError(
                "--model.compile true needs a C++ compiler on CPU (torch.compile builds its kernels with one): "
                "install g++, or leave compile off"
            )
        self.optim = optim
        self.objective = objective or CrossEntropy()
        self.objective.check(task)
        self.model = None  # built in configure_model, so sharded strategies can build it in place
        # Adapter checkpoints hold only the trained weights (on_load_checkpoint checks they are all there); sharded
        # strategies load checkpoints through this flag, the others through load_state_dict below.
        self.strict_loading = False
        self.resumed_rng_states = None  # from a checkpoint, applied when training (re)starts
        self.precomputed: PrecomputedReference | None = None  # reference: precomputed (set up in configure_model)
        self._last_batch_tokens = 0
        self._step_loss: tuple[int, torch.Tensor] | None = None  # (step, this process's share of its train_loss)
        self.parameter_counts: tuple[int, int] | None = None  # (trainable, total), counted when fitting starts
        # {stage}_loss and what else the objective logs at evaluation, as exact means across processes.
        names = ("loss", *self.objective.eval_logged)
        self.eval_means = nn.ModuleDict({f"{s}_{n}": MeanMetric() for s in ("val", "test") for n in names})

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs) -> FineTuneModule:
        """Lightning's, always reading tensors and plain data only (see checkpoints.py; `weights_only` is not
        negotiable); a missing, torn or unsafe file is one clear error."""
        check_checkpoint(Path(checkpoint_path))
        return super().load_from_checkpoint(checkpoint_path, *args, **{**kwargs, "weights_only": True})

    def configure_model(self) -> None:
        if self.model is not None:
            return
        h = self.hparams
        tokenizer = load_tokenizer(h.model_name_or_path, h.trust_remote_code)
        if h.init_from:
            model = self.starting_model(h.init_from)
        else:
            model = load_model(
                h.model_name_or_path,
                h.task,
                dtype=h.dtype or self.default_dtype(),
                labels=h.labels,
                num_labels=h.num_labels,
                pad_token_id=tokenizer.pad_token_id,
                quantization_config=self.method.quantization_config(),
                trust_remote_code=h.trust_remote_code,
            )
        if h.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # from_pretrained returns the model in eval mode and Lightning keeps submodule modes: switch dropout on.
        self.model = self.method.apply(model, h.task).train()
        if h.dtype is None:  # frozen weights in bf16; what trains (adapters, a classifier head) keeps fp32 updates
            for parameter in self.model.parameters():
                if parameter.requires_grad and parameter.is_floating_point():
                    parameter.data = parameter.data.float()
        if self.device_mesh is not None:  # ModelParallelStrategy (FSDP2): shard along its data-parallel dimension
            shard_transformer_blocks(self.model, self.device_mesh["data_parallel"])
        if h.compile:
            for _, block in transformer_blocks(self.model):
                block.compile()
        frozen_dtype = "bfloat16" if self.bf16_compute else "float32"  # no fp32 updates to keep
        reference = None
        if self.objective.needs_reference:
            precomputed = self.objective.precomputes_reference
            reference = self.reference(frozen_dtype, copy=not precomputed)
            if precomputed:
                key = reference_key(h.model_name_or_path, h.init_from, frozen_dtype)
                recomputable = self.method.adapters_off(self.model) is not None
                self.precomputed = PrecomputedReference(reference, key, recomputable)
        self.objective.configure(
            self.policy, tokenizer, dtype=frozen_dtype, trust_remote_code=h.trust_remote_code, reference=reference
        )

    def starting_model(self, checkpoint: str) -> nn.Module:
        """The trained model of `checkpoint` on this run's base, its adapter merged into plain weights."""
        h = self.hparams
        if self.method.quantization_config() is not None:
            raise UserError(
                f"--model.init_from with {type(self.method).__name__}: quantizing happens as the base loads; export "
                "the checkpoint merged (lightning-ft export --merge) and pass it as --model.model_name_or_path"
            )
        settings = {
            "model_name_or_path": h.model_name_or_path,
            "objective": None,
            "dtype": h.dtype or self.default_dtype(),
        }
        start = type(self).load_from_checkpoint(Path(checkpoint).expanduser(), map_location="cpu", **settings)
        if start.hparams.task != h.task:
            raise UserError(
                f"--model.init_from {checkpoint} holds a {start.hparams.task} model; this run trains {h.task}"
            )
        if not start.method.can_merge:
            raise UserError(
                f"--model.init_from {checkpoint}: its {type(start.method).__name__} cannot merge into the base, which "
                "this run would adapt (train it with LoRA or Full)"
            )
        return start.method.merge(start.model)

    def default_dtype(self) -> str:
        return "bfloat16" if self.bf16_compute and not self.method.saves_full_model else "float32"

    @property
    def bf16_compute(self) -> bool:
        """Whether the trainer computes in bf16 (then frozen weights need not be stored in more)."""
        return self._trainer is not None and str(self.trainer.precision).startswith("bf16")

    # -- training -------------------------------------------------------------------------------------------

    @property
    def policy(self) -> Forward:
        """The forward passes of the model being trained, as objectives use them."""
        method = self.method
        return Forward(
            self.model,
            self.hparams.task,
            name=type(method).__name__,
            hidden_states=method.hidden_state_loss,
            packing=method.supports_packing,
        )

    def reference(self, dtype: str, copy: bool = True) -> Forward:
        """The policy as it is now (before training), for objectives that compare against it: the policy itself
        with its adapters off, or, when the method trains the base weights, a frozen copy (in `dtype`; without
        `copy`, the policy itself, which is the reference only until the first step)."""
        if self.method.adapters_off(self.model) is not None:
            return replace(self.policy, context=lambda: self.method.adapters_off(self.model))
        if not copy:
            return replace(self.policy, context=torch.no_grad)
        copy = copy_module(self.model).to(getattr(torch, dtype)).requires_grad_(False).eval()
        # Not a submodule (in a Forward, not an attribute): it stays out of checkpoints, counts and the optimizer.
        return replace(self.policy, model=copy)

    def loss(self, batch: dict) -> Terms:
        """The objective's training loss of a batch: its mean, what it is a mean over (label tokens, examples,
        pairs), and what else to log."""
        return self.objective.terms(self.policy, self.with_reference(batch, "train"), training=True)

    def with_reference(self, batch: dict, split: str) -> dict:
        """The batch with its precomputed reference log-probabilities, when the objective takes them."""
        return self.precomputed.attach(batch, split) if self.precomputed else batch

    def prepare_reference(self, splits: list[str]) -> None:
        """`reference: precomputed`: every split's tables, from the cache or computed now (before the first step,
        where the policy is still the reference)."""
        if self.precomputed is None:
            return
        self.precomputed.trained |= self.trainer.ckpt_path is not None  # resumed, or validating a checkpoint
        self.precomputed.prepare(self.trainer.datamodule, splits, write=self.global_rank == 0)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        return self.policy.logits(inputs)

    @property
    def flops_per_batch(self) -> int | None:
        """FLOPs of the last training batch, for the throughput monitor's MFU: per real token, 2N for the forward,
        2N for the activation gradients and 2T for the weight gradients (N parameters, T of them trained); the
        attention's sequence-length term is left out, as in the usual 6N estimate."""
        if self.parameter_counts is None or not self._last_batch_tokens:
            return None
        trainable, total = self.parameter_counts
        return (4 * total + 2 * trainable) * self._last_batch_tokens

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._last_batch_tokens = int(batch["num_tokens"]) if "num_tokens" in batch else batch["input_ids"].numel()
        terms = self.loss(batch)
        loss, count = terms.loss, terms.count
        for name, value in terms.logged.items():
            self.log(f"train_{name}", value, batch_size=max(terms.weight(name), 1))
        if "step_terms" not in batch:
            self.log("train_loss", loss, prog_bar=True, batch_size=count)
            return loss
        share = loss.detach() * count / batch["step_terms"]
        if self._step_loss is not None and self._step_loss[0] == self.global_step:  # an accumulated batch
            share = share + self._step_loss[1]
        self._step_loss = (self.global_step, share)
        # The weighted mean over the whole optimizer step (all processes, all accumulated batches): this batch's
        # summed losses over the step's loss terms. Lightning divides by the accumulation count and DDP averages
        # gradients over processes, so both factors are multiplied back in.
        scale = self.trainer.world_size * self.trainer.accumulate_grad_batches / batch["step_terms"]
        return loss * count * scale

    def on_before_optimizer_step(self, optimizer) -> None:
        """train_loss: the token-weighted mean over the whole optimizer step (every process, every accumulated
        batch), the loss the step descends; the same however the global batch is split into processes and nodes."""
        if self._step_loss is not None and self._step_loss[0] == self.global_step:
            self.log("train_loss", self._step_loss[1], prog_bar=True, sync_dist=True, reduce_fx="sum")

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "test")

    def _eval_step(self, batch: dict, stage: str) -> dict:
        """Accumulate the loss and the objective's terms, weighted by what each is a mean over; return a
        classifier's predictions for the metric callbacks."""
        terms: Terms = self.objective.terms(self.policy, self.with_reference(batch, stage), training=False)
        for name, value in {"loss": terms.loss, **terms.logged}.items():
            self.eval_means[f"{stage}_{name}"].update(value.detach(), terms.weight(name))
        if terms.logits is None:
            return {"loss": terms.loss}
        return {"loss": terms.loss, "preds": terms.logits.argmax(-1), "target": batch["labels"]}

    def on_validation_start(self) -> None:
        self.prepare_reference(["val"])

    def on_test_start(self) -> None:
        self.prepare_reference(["test"])

    def on_validation_epoch_end(self) -> None:
        self._log_eval_means("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_means("test")

    def _log_eval_means(self, stage: str) -> None:
        """The weighted means over the whole eval set, summed exactly across processes (torchmetrics)."""
        for name, metric in self.eval_means.items():
            if not name.startswith(f"{stage}_") or not metric.update_count:
                continue
            value = metric.compute()
            metric.reset()
            self.log(name, value, prog_bar=name == f"{stage}_loss")
            if name == f"{stage}_loss" and self.objective.loss_is_nll and self.hparams.task == "causal_lm":
                self.log(f"{stage}_perplexity", value.exp())  # exp of the mean token negative log-likelihood

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim)
        scheduler = build_scheduler(optimizer, self.optim, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        self.prepare_reference(["train", "val"])
        self.parameter_counts = trainable, total = count_parameters(self.model)
        rank_zero_info(f"trainable: {trainable:,} / {total:,} ({100 * trainable / total:.2f}%)  {self.method!r}")

    # -- checkpoints ----------------------------------------------------------------------------------------

    def _trainable_keys(self) -> set[str]:
        return {f"model.{name}" for name in self.method.trainable_state_dict(self.model)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only what the method trains (PEFT checkpoints stay small); hyperparameters as plain data (read back
        with weights_only=True, see checkpoints.py); what the base model was; every process's RNG states."""
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["hyper_parameters"] = plain_hyperparameters(checkpoint.get("hyper_parameters", {}))
        checkpoint["lightning_ft"] = {
            "method": repr(self.method),
            "base": base_fingerprint(self.model),
            "rng_states": gather_rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("lightning_ft", {})
        states = saved.get("rng_states")
        if isinstance(states, list):  # one per process; a run resumed on fewer or more processes takes what there is
            states = states[self.global_rank % len(states)]
        self.resumed_rng_states = states
        task = checkpoint.get("hyper_parameters", {}).get("task")
        if task and task != self.hparams.task:  # the other head: its weights and optimizer state cannot fit
            raise UserError(f"the checkpoint is a {task} model; this run trains --model.task {self.hparams.task}")
        base, here = saved.get("base"), base_fingerprint(self.model)
        if base and base != here:
            differences = ", ".join(
                f"{k} {base.get(k)} there, {here.get(k)} here" for k in here if base.get(k) != here[k]
            )
            raise UserError(f"the checkpoint was trained on another base model ({differences})")
        if "state_dict" not in checkpoint:
            return  # a sharded checkpoint (FSDP2): the strategy has already loaded the weights in place
        missing = sorted(self._trainable_keys() - checkpoint["state_dict"].keys())
        if missing:
            raise UserError(
                f"checkpoint (trained with {saved.get('method', 'an unknown method')}) lacks {len(missing)} weights "
                f"this run trains with {self.method!r}, e.g. {missing[0]}"
            )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load weights, where only the trained ones must be present: the frozen ones came from the base model.

        Strict about what matters (a trained weight missing, or a key this model does not have) and silent about
        the frozen base weights an adapter checkpoint leaves out (4-bit ones could not be reloaded anyway).
        """
        try:
            result = super().load_state_dict(state_dict, strict=False, assign=assign)
        except RuntimeError as err:  # torch lists every mismatch on lines of its own: the first one says enough
            mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), None)
            if mismatch is None:
                raise
            raise UserError(
                f"weights do not fit this model: {mismatch} (another method setting, e.g. the LoRA rank?)"
            ) from None
        missing = sorted(set(result.missing_keys) & self._trainable_keys())
        if strict and (missing or result.unexpected_keys):
            raise UserError(
                f"weights do not fit this model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
            )
        return result._replace(missing_keys=missing)

    def on_train_start(self) -> None:
        # Not at load time: the sanity-check validation in between draws from the global RNG (DataLoader seeds).
        if self.resumed_rng_states is not None:
            set_rng_states(self.resumed_rng_states)
            self.resumed_rng_states = None


def gather_rng_states() -> list[dict]:
    """Every process's RNG states, by rank: each draws its own dropout masks. Checkpoints are saved by all processes
    together (Lightning's rule), so the gather cannot hang."""
    return all_gather_objects(rng_states())
