"""The contenders of scripts/bench_throughput.py: each trains the workload's model on its examples and is measured
the same way, by hooks outside the framework under test.

- real tokens: every training forward's input ids that are not the pad token, counted at the input embedding (once
  per forward, gradient checkpointing or not);
- time: from the first training forward to the return of the framework's train call (so it includes each one's
  per-step overhead and end-of-training work, and none of its setup: model loading, tokenization);
- peak RSS of the process when training ends; the GPU's max allocated memory on CUDA;
- final loss: the token-weighted mean loss of the trained model over all the examples, computed here in fp32.

Peers get the examples already tokenized by lightning_ft's pipeline (tokenized.jsonl), so every contender trains on
the same token ids and labels (responses only); lightning_ft reads the raw file through its own pipeline.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lightning_ft.constants import IGNORE_INDEX


@dataclass
class Workload:
    """What every contender trains: written once by the benchmark as workload.json, read by each contender."""

    workdir: str
    model_dir: str
    train_path: str  # the raw records, for lightning_ft's own pipeline
    tokenized_path: str  # the same records tokenized by that pipeline: input_ids and labels, for the peers
    pad_token_id: int
    method: str = "lora"  # lora | qlora | full
    batch_size: int = 8
    max_length: int = 512
    lr: float = 2e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    max_steps: int | None = None  # None: one pass over the examples

    def save(self) -> None:
        Path(self.workdir, "workload.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, workdir: str | Path) -> Workload:
        return cls(**json.loads(Path(workdir, "workload.json").read_text()))

    def examples(self) -> list[dict]:
        lines = Path(self.tokenized_path).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


class Meter:
    """Counts real tokens at every input embedding's training forward and clocks from the first one."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.tokens = self.forwards = 0
        self.started: float | None = None
        self.counting = True
        self.handle = nn.modules.module.register_module_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args) -> None:
        if not (self.counting and type(module) is nn.Embedding and module.training and args):
            return
        if self.started is None:
            self.started = time.perf_counter()
        self.tokens += int((args[0] != self.pad_token_id).sum())
        self.forwards += 1

    def stop(self) -> dict:
        seconds = time.perf_counter() - self.started
        self.counting = False
        self.handle.remove()
        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        return {
            "tokens": self.tokens,
            "forwards": self.forwards,
            "seconds": seconds,
            "tokens_per_s": self.tokens / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": gpu,
        }


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported() -> bool:
    from lightning_ft.precision import fastest_precision

    return fastest_precision("auto") == "bf16-mixed"


# -- the peers' shared pieces ----------------------------------------------------------------------------------


def peft_config(w: Workload):
    from peft import LoraConfig

    return LoraConfig(
        r=w.lora_r, lora_alpha=w.lora_alpha, target_modules=w.lora_targets, lora_dropout=0.0, task_type="CAUSAL_LM"
    )


def load_base(w: Workload, dtype=torch.float32):
    """The base model as the peers' recipes load it (QLoRA: 4-bit NF4 and peft's k-bit preparation)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {}
    if w.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(w.model_dir, dtype=dtype, **kwargs)
    if w.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def peft_model(w: Workload):
    from peft import get_peft_model

    model = load_base(w)
    return model if w.method == "full" else get_peft_model(model, peft_config(w))


def examples_dataset(w: Workload):
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in w.examples()])


def hf_arguments(w: Workload, cls=None, **overrides):
    """TrainingArguments (or TRL's SFTConfig) shared by the peers: one epoch, no saving, no logging backends."""
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    settings = {
        "output_dir": str(Path(w.workdir, "hf_output")),
        "per_device_train_batch_size": w.batch_size,
        "learning_rate": w.lr,
        "num_train_epochs": 1,
        "max_steps": w.max_steps or -1,
        "save_strategy": "no",
        "report_to": [],
        "logging_steps": 10,
        "disable_tqdm": True,
        "seed": 42,
        "use_cpu": not torch.cuda.is_available(),
    }
    return cls(**{**settings, **overrides})


def run_hf_trainer(w: Workload, *, pad_to_max_length: bool, bf16: bool) -> tuple[dict, nn.Module]:
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer

    tokenizer = AutoTokenizer.from_pretrained(w.model_dir)
    model = peft_model(w)
    collator = DataCollatorForSeq2Seq(
        tokenizer,
        padding="max_length" if pad_to_max_length else True,
        max_length=w.max_length if pad_to_max_length else None,
        label_pad_token_id=IGNORE_INDEX,
    )
    trainer = Trainer(
        model=model,
        args=hf_arguments(w, bf16=bf16),
        train_dataset=examples_dataset(w),
        data_collator=collator,
    )
    meter = Meter(w.pad_token_id)
    trainer.train()
    return meter.stop(), trainer.model


def run_trl(w: Workload, **overrides) -> tuple[dict, nn.Module]:
    from trl import SFTConfig, SFTTrainer

    args = hf_arguments(w, SFTConfig, max_length=w.max_length, **overrides)
    trainer = SFTTrainer(
        model=load_base(w),
        args=args,
        train_dataset=examples_dataset(w),
        peft_config=None if w.method == "full" else peft_config(w),
    )
    meter = Meter(w.pad_token_id)
    trainer.train()
    return meter.stop(), trainer.model


def run_lightning_ft(w: Workload, *extra: str) -> tuple[dict, nn.Module]:
    """lightning_ft through its command line, with its defaults: only the workload is given."""
    from lightning_ft.commands.fit import FineTuneCLI

    method = {"lora": "LoRA", "qlora": "QLoRA", "full": "Full"}[w.method]
    args = [
        "fit",
        f"--model.model_name_or_path={w.model_dir}",
        f"--model.method={method}",
        f"--model.optim.lr={w.lr}",
        f"--data.train_path={w.train_path}",
        f"--data.max_length={w.max_length}",
        f"--data.batch_size={w.batch_size}",
        f"--data.cache_dir={Path(w.workdir, 'cache')}",
        "--trainer.max_epochs=1",
        f"--trainer.max_steps={w.max_steps or -1}",
        f"--trainer.default_root_dir={Path(w.workdir, 'runs', f'lightning_ft-{time.time_ns()}')}",
        "--ckpt_path=null",
    ]
    if w.method != "full":
        targets = ",".join(w.lora_targets)
        args += [f"--model.method.r={w.lora_r}", f"--model.method.alpha={w.lora_alpha}"]
        args += ["--model.method.dropout=0.0", f"--model.method.target_modules=[{targets}]"]
    meter = Meter(w.pad_token_id)
    cli = FineTuneCLI([*args, *extra])
    return meter.stop(), cli.model.model


def run_lightning_ft_with_model_logits(w: Workload) -> tuple[dict, nn.Module]:
    """lightning_ft scoring the model's own full logits, as if its head were not a plain projection (an ablation)."""
    from lightning_ft import forward

    plain_output_head, forward.plain_output_head = forward.plain_output_head, lambda model: None
    try:
        return run_lightning_ft(w)
    finally:
        forward.plain_output_head = plain_output_head


# -- the ceiling: the model's own forward + backward + step on full rows, nothing else ---------------------------


def run_ceiling(w: Workload) -> tuple[dict, nn.Module]:
    """The examples' tokens cut into rows of max_length (no padding, no masks), as many rows a step as hold
    batch_size examples on average (the contenders' tokens per step), the model's own loss on every token, AdamW,
    autocast as lightning_ft's default precision picks it."""
    from lightning_ft.data.batching import rows_per_batch

    torch.manual_seed(42)
    model = peft_model(w).to(device()).train()
    examples = w.examples()
    stream = torch.tensor([t for e in examples for t in e["input_ids"]])
    rows = stream[: len(stream) // w.max_length * w.max_length].view(-1, w.max_length)
    per_step = rows_per_batch(w.batch_size, len(rows), len(examples))
    steps = math.ceil(len(rows) / per_step)
    if w.max_steps:
        steps = min(steps, w.max_steps)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=w.lr)
    dtype = torch.bfloat16 if bf16_supported() else torch.float32
    meter = Meter(w.pad_token_id)
    for step in range(steps):
        batch = rows[step * per_step : (step + 1) * per_step].to(device())
        with torch.autocast(device().type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device().type == "cuda":
        torch.cuda.synchronize()
    return meter.stop(), model


# -- final loss -------------------------------------------------------------------------------------------------


@torch.no_grad()
def final_loss(model: nn.Module, w: Workload) -> float:
    """Token-weighted mean loss over every example's labels, in fp32, the same computation for every contender
    (batches padded by lightning_ft's collator, scored by its plain cross-entropy)."""
    from lightning_ft.data.batching import collate
    from lightning_ft.loss import plain_cross_entropy

    model = model.float().eval()
    examples = w.examples()
    total, count = 0.0, 0
    for start in range(0, len(examples), w.batch_size):
        batch = collate(examples[start : start + w.batch_size], w.pad_token_id)
        inputs = {key: batch[key].to(device()) for key in ("input_ids", "attention_mask")}
        logits = model(**inputs, use_cache=False).logits
        batch_total, batch_count = plain_cross_entropy(logits[:, :-1], batch["labels"][:, 1:].to(device()))
        total, count = total + batch_total.item(), count + batch_count
    return total / count


CONTENDERS = {  # name: (label, run)
    "hf_recipe": (
        "HF Trainer + peft, pad to max_length, fp32 (a)",
        lambda w: run_hf_trainer(w, pad_to_max_length=True, bf16=False),
    ),
    "hf_best": (
        "HF Trainer + peft, dynamic padding, bf16 (b)",
        lambda w: run_hf_trainer(w, pad_to_max_length=False, bf16=bf16_supported()),
    ),
    "trl_default": ("TRL SFTTrainer, defaults (c)", lambda w: run_trl(w)),
    "trl_packing": ("TRL SFTTrainer, packing (c)", lambda w: run_trl(w, packing=True)),
    "trl_fastest": (
        "TRL SFTTrainer, no gradient checkpointing (c)",
        lambda w: run_trl(w, gradient_checkpointing=False),
    ),
    "lightning_ft": ("lightning_ft, defaults (d)", run_lightning_ft),
    "lightning_ft_compiled": (
        "lightning_ft, compiled blocks (d)",
        lambda w: run_lightning_ft(w, "--model.compile=true"),
    ),
    "ceiling": ("the model's own fwd+bwd+step, full rows", run_ceiling),
}
# lightning_ft without one of its optimisations each: what each gives (--contenders lightning_ft ablation_...)
ABLATIONS = {
    "ablation_fp32": ("lightning_ft, fp32 compute", lambda w: run_lightning_ft(w, "--trainer.precision=32-true")),
    "ablation_fp32_base": ("lightning_ft, fp32 frozen weights", lambda w: run_lightning_ft(w, "--model.dtype=float32")),
    "ablation_model_logits": ("lightning_ft, the model's full logits", run_lightning_ft_with_model_logits),
    "ablation_padded": ("lightning_ft, dynamic padding", lambda w: run_lightning_ft(w, "--data.batching=pad")),
}
CONTENDERS.update(ABLATIONS)


def run(name: str, workdir: str | Path) -> dict:
    """Train one contender on the workload in workdir and measure it."""
    w = Workload.load(workdir)
    measured, model = CONTENDERS[name][1](w)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # 2N forward, 2N activation gradients, 2T weight gradients (N parameters, T of them trained): the usual 6N
    flops = 4 * total + 2 * trainable
    return {"contender": name, **measured, "flops_per_token": flops, "final_loss": final_loss(model, w)}
