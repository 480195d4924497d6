"""`lightning-ft export`: every method's export computes what the trained model computed, through plain
transformers / peft / onnxruntime; bad input ends in one clear line and leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime
import pytest
import torch
import yaml
from conftest import LABELS
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

from lightning_ft.commands import main as cli
from lightning_ft.errors import UserError
from lightning_ft.export import exporter, load_exported
from lightning_ft.export.check import logits, probe_inputs
from lightning_ft.export.exporter import ExportRequest
from lightning_ft.files import PARTIAL_SUFFIX
from lightning_ft.precision import cpu_has_bf16
from lightning_ft.trained import load_trained

# Trained long enough (at a high rate) that every adapter is far from its initial value: a merge or a reload that
# dropped it would show in the logits.
FIT = [
    "--trainer.max_steps",
    "3",
    "--trainer.limit_val_batches",
    "0",
    "--trainer.precision",
    "32-true",
    "--model.optim.lr",
    "0.05",
]
METHODS = {
    "full": ["--model.method", "Full", "--model.optim.lr", "0.001"],
    "lora": ["--model.method", "LoRA", "--model.method.r", "4"],
    "qlora": ["--model.method", "QLoRA", "--model.method.r", "4", "--model.method.compute_dtype", "float32"],
    "prefix": [
        "--model.method",
        "PrefixTuning",
        "--model.method.num_virtual_tokens",
        "4",
        "--data.batching",
        "group_by_length",
    ],
    "bottleneck": ["--model.method", "BottleneckAdapter"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, data_dir):
    """checkpoint of a short fit per (method, task), trained once for the whole module."""
    checkpoints = {}

    def train(method: str, classification: bool = False) -> Path:
        key = (method, classification)
        if key not in checkpoints:
            run_dir = tmp_path_factory.mktemp(f"{method}_{'cls' if classification else 'lm'}")
            prefix = "cls_" if classification else ""
            args = ["fit", "--model.model_name_or_path", str(tiny_model), "--trainer.default_root_dir", str(run_dir)]
            args += ["--data.train_path", str(data_dir / f"{prefix}train.jsonl")]
            args += ["--data.val_path", str(data_dir / f"{prefix}val.jsonl"), "--trainer.accelerator", "cpu"]
            args += ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false", *FIT, *METHODS[method]]
            if classification:
                args += ["--model.task", "sequence_classification", "--data.format", "classification"]
                args += ["--model.labels", json.dumps(LABELS)]
            assert cli(args) == 0
            checkpoints[key] = run_dir / "checkpoints" / "last.ckpt"
        return checkpoints[key]

    return train


def trained_logits(checkpoint: Path, inputs: dict) -> torch.Tensor:
    module = load_trained(checkpoint)
    return logits(module.model, module.hparams.task, inputs)


def export(checkpoint: Path, output: Path, *flags: str) -> Path:
    assert cli(["export", "--ckpt", str(checkpoint), "--output", str(output), *flags]) == 0
    return output


@pytest.mark.parametrize("method", ["full", "lora", "qlora", "prefix", "bottleneck"])
def test_every_method_exports_what_it_trained(method, trained, tiny_model, tmp_path):
    checkpoint = trained(method)
    inputs = probe_inputs(vocab_size=300, shape=(2, 9), seed=7)
    expected = trained_logits(checkpoint, inputs)
    exports = {}
    if method != "full":  # the adapter alone, through peft's own loader (or lightning_ft's, for bottleneck adapters)
        adapter = export(checkpoint, tmp_path / "adapter")
        exports["adapter"] = logits(load_exported(adapter), "causal_lm", inputs)
        if method != "bottleneck":  # peft's own loader, no lightning_ft involved
            quantized = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
            base = AutoModelForCausalLM.from_pretrained(
                tiny_model, quantization_config=quantized if method == "qlora" else None
            )
            plain = logits(PeftModel.from_pretrained(base, adapter), "causal_lm", inputs)
            # bitsandbytes' AVX512-BF16 CPU kernel (inference only, not training) computes 4-bit layers in bf16
            scale = 5e-2 if method == "qlora" and cpu_has_bf16() else 1e-4
            torch.testing.assert_close(plain, expected, atol=scale * expected.abs().max().item(), rtol=0)
        assert not (adapter / "model.safetensors").exists()  # the base weights are not copied along
    if method in ("full", "lora", "qlora"):  # plain transformers, no lightning_ft or peft involved
        merged = export(checkpoint, tmp_path / "merged", "--merge")
        exports["merged"] = logits(AutoModelForCausalLM.from_pretrained(merged), "causal_lm", inputs)
        assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    else:
        with pytest.raises(UserError, match="cannot be merged"):
            exporter.export(ExportRequest(str(checkpoint), str(tmp_path / "refused"), merge=True))
        assert not (tmp_path / "refused").exists()
    for kind, got in exports.items():
        # QLoRA: the 4-bit base dequantised and the update added in fp32 (compute_dtype float32) is what the 4-bit
        # model computes, up to fp32 rounding: the stated tolerance is 1e-4 of the largest logit, as for the others.
        torch.testing.assert_close(got, expected, atol=1e-4 * expected.abs().max().item(), rtol=0, msg=kind)
    if len(exports) == 2:  # merged LoRA equals base + adapter
        torch.testing.assert_close(exports["merged"], exports["adapter"], atol=1e-5, rtol=1e-5)


def test_classifier_exports_with_its_head_and_labels(trained, tiny_model, tmp_path):
    checkpoint = trained("lora", classification=True)
    inputs = probe_inputs(vocab_size=300, shape=(3, 7), seed=3)
    expected = trained_logits(checkpoint, inputs)
    merged = export(checkpoint, tmp_path / "merged", "--merge")
    model = AutoModelForSequenceClassification.from_pretrained(merged)
    assert model.config.id2label == dict(enumerate(LABELS))
    torch.testing.assert_close(logits(model, "sequence_classification", inputs), expected, atol=1e-5, rtol=1e-5)
    adapter = export(checkpoint, tmp_path / "adapter")
    # The freshly initialised head trained too: it travels in the adapter (peft's modules_to_save).
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2, pad_token_id=3)
    peft_model = PeftModel.from_pretrained(base, adapter)
    torch.testing.assert_close(logits(peft_model, "sequence_classification", inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("classification", [False, True])
def test_onnx_runs_in_onnxruntime_like_pytorch(classification, trained, tmp_path):
    checkpoint = trained("lora", classification)
    task = "sequence_classification" if classification else "causal_lm"
    out = export(checkpoint, tmp_path / "onnx", "--format", "onnx")
    merged = load_trained(checkpoint)
    merged = merged.method.merge(merged.model)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    for shape in ((1, 5), (4, 13)):  # shapes other than the traced one: batch and length stay dynamic
        inputs = probe_inputs(vocab_size=300, shape=shape, seed=shape[1])
        feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
        got = torch.from_numpy(session.run(["logits"], feeds)[0])
        torch.testing.assert_close(got, logits(merged, task, inputs), atol=1e-4, rtol=1e-4)
    assert json.loads((out / "lightning_ft_export.json").read_text())["check"]["onnx_vs_pytorch"] < 1e-4


@pytest.mark.parametrize("kind, layer", [("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_quantized_export_loads_with_plain_transformers(kind, layer, trained, tmp_path):
    checkpoint = trained("lora")
    merged = export(checkpoint, tmp_path / "merged", "--merge")
    quantized = export(checkpoint, tmp_path / kind, "--merge", "--quantize", kind)
    model = AutoModelForCausalLM.from_pretrained(quantized)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer
    assert (quantized / "model.safetensors").stat().st_size < (merged / "model.safetensors").stat().st_size
    inputs = probe_inputs(vocab_size=300, shape=(2, 9), seed=5)
    reference = logits(AutoModelForCausalLM.from_pretrained(merged), "causal_lm", inputs)
    check = json.loads((quantized / "lightning_ft_export.json").read_text())["check"]
    assert check["top1_agreement"] >= 0.5  # recorded against the trained model: quantisation is lossy, not broken
    assert (logits(model, "causal_lm", inputs) - reference).abs().max() < 0.25 * reference.abs().max()


def test_model_card_describes_the_run(trained, tmp_path):
    checkpoint = trained("lora")
    out = export(checkpoint, tmp_path / "card", "--dtype", "bfloat16")
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    record = json.loads((checkpoint.parent.parent / "run.json").read_text())
    assert header["library_name"] == "peft" and header["pipeline_tag"] == "text-generation"
    assert header["base_model"] == record["model"]
    for fact in (
        "| r | 4 |",
        record["data"]["fingerprint"],
        f"| train_loss (final) | {record['metrics']['final']['train_loss']:.6g}",
    ):
        assert fact in card, fact
    assert "| transformers (export) |" in card and "| torch (training) |" in card
    assert json.loads((out / "training_run.json").read_text()) == record
    exported = json.loads((out / "lightning_ft_export.json").read_text())
    assert exported["dtype"] == "bfloat16" and exported["checkpoint_step"] == 3
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_bad_input_is_one_line_and_writes_nothing(trained, tiny_model, data_dir, tmp_path, capsys):
    checkpoint = trained("lora")

    def refused(*flags: str, output: Path = tmp_path / "out") -> str:
        assert cli(["export", "--ckpt", str(checkpoint), "--output", str(output), *flags]) == 2
        assert not output.exists() or output == tmp_path / "full"
        assert not list(tmp_path.glob(f".*{PARTIAL_SUFFIX}"))
        return capsys.readouterr().err.strip()

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert "is not empty: add --overwrite" in refused(output=full)
    assert (full / "keep.txt").read_text() == "mine"
    assert "--quantize quantises the merged weights: add --merge" in refused("--quantize", "int8")
    assert "ONNX Runtime has no NF4" in refused("--format", "onnx", "--quantize", "nf4")
    assert "--base /nowhere: no such directory" in refused("--base", "/nowhere")
    other = tmp_path / "other_base"  # another architecture: 4 layers instead of 2
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    assert "trained on another base model (num_hidden_layers 2 there, 4 here)" in refused("--base", str(other))
    moved = tmp_path / "moved.ckpt"  # its base model is no longer where training read it
    saved = torch.load(checkpoint, weights_only=True)
    saved["hyper_parameters"]["model_name_or_path"] = str(tmp_path / "gone")
    torch.save(saved, moved)
    checkpoint = moved
    assert f"the checkpoint's base model {tmp_path / 'gone'}: no such directory (moved? pass --base DIR)" in refused()
    checkpoint = tmp_path / "foreign.ckpt"  # a checkpoint from elsewhere: weights, no lightning-ft settings
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "global_step": 1}, checkpoint)
    assert "not a lightning-ft checkpoint (no model_name_or_path in its hyperparameters)" in refused()
    checkpoint = trained("lora")
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    checkpoint = torn
    assert "not a readable checkpoint, cut short or corrupt" in refused()


def test_a_failed_export_leaves_the_old_one_in_place(trained, tmp_path, monkeypatch):
    checkpoint = trained("lora")
    out = export(checkpoint, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(exporter, "compare", lambda reference, got: {"relative_diff": float("nan")})
    with pytest.raises(UserError, match="computes other logits than the trained model"):
        exporter.export(ExportRequest(str(checkpoint), str(out), merge=True, overwrite=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(f".*{PARTIAL_SUFFIX}"))
    monkeypatch.undo()
    export(checkpoint, out, "--merge", "--overwrite")  # --overwrite replaces it once the new one checks out
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


def test_merged_export_after_bf16_training_is_the_fp32_base_plus_the_adapter(tiny_model, data_dir, tmp_path):
    """Training computed in bf16 (the frozen base held in bf16): the merged export still folds the adapter into the
    base's own fp32 weights, so it equals peft's base + adapter at fp32 tolerance."""
    run_dir = tmp_path / "run"
    args = ["fit", "--model.model_name_or_path", str(tiny_model), "--trainer.default_root_dir", str(run_dir)]
    args += ["--data.train_path", str(data_dir / "train.jsonl"), "--data.val_path", str(data_dir / "val.jsonl")]
    args += ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    args += [*FIT, *METHODS["lora"], "--trainer.precision", "bf16-mixed", "--model.dtype", "bfloat16"]
    assert cli(args) == 0
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    adapter = export(checkpoint, tmp_path / "adapter")
    merged = export(checkpoint, tmp_path / "merged", "--merge")
    inputs = probe_inputs(vocab_size=300, shape=(2, 9), seed=7)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    base_logits = logits(base, "causal_lm", inputs)
    reference = logits(PeftModel.from_pretrained(base, adapter), "causal_lm", inputs)
    got = logits(AutoModelForCausalLM.from_pretrained(merged), "causal_lm", inputs)
    assert (reference - base_logits).abs().max() > 1e-3  # the adapter changes the logits: a lost merge would show
    torch.testing.assert_close(got, reference, atol=1e-5 * reference.abs().max().item(), rtol=0)
    record = json.loads((merged / "lightning_ft_export.json").read_text())
    assert record["check"]["reference"].startswith("base model")
