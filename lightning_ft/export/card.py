"""The model card (README.md) of an export: what it is, how to load it, and how it was made.

The metadata header is huggingface_hub's (ModelCardData), so the Hub shows base model, library and task; the body
comes from the export record, the checkpoint's hyperparameters and the run record (run.json) of the training run.
"""

from __future__ import annotations

import json

from huggingface_hub import ModelCardData

PIPELINES = {"causal_lm": "text-generation", "sequence_classification": "text-classification"}


def model_card(record: dict, hparams: dict, run: dict | None) -> str:
    """Markdown with a YAML header; `record` is the export record, `run` the training run's record (or None)."""
    method = record["method"]
    header = ModelCardData(
        base_model=record["base_model"],
        library_name=method.get("adapter_library") if record["format"] == "adapter" else None,
        pipeline_tag=PIPELINES[record["task"]],
        tags=["lightning-ft", method["name"].lower(), *(["onnx"] if record["format"] == "onnx" else [])],
    ).to_yaml()
    sections = [
        f"---\n{header}\n---\n",
        f"# {record['name']}\n",
        (
            f"{method['name']} fine-tune of `{record['base_model']}` ({record['task']}), exported by lightning-ft "
            f"{record['versions'].get('lightning-ft')} as {describe(record)}.\n"
        ),
        "## How to load\n",
        f"```python\n{loading_code(record)}\n```\n",
        "## Training\n",
        table({"method": method["name"], **method["settings"]}),
        table(flatten({"optim": hparams.get("optim") or {}})) if hparams.get("optim") else "",
        table(training_facts(run)) if run else "No run record (run.json) was found beside the checkpoint.\n",
        "## Data\n",
        table(data_facts(run)) if run and run.get("data") else "Not recorded.\n",
        "## Metrics\n",
        table(metrics(run)) if run and metrics(run) else "None recorded.\n",
        "## Export check\n",
        "Logits of this export against the trained model's on a probe batch of random token ids:\n",
        table(flatten(record["check"])),
        "## Versions\n",
        table({f"{name} (export)": version for name, version in record["versions"].items() if version}),
        table({f"{name} (training)": v for name, v in (run or {}).get("packages", {}).items() if v}) if run else "",
    ]
    if run:
        run_json = json.dumps(run, indent=2)
        details = f"<details><summary>run.json</summary>\n\n```json\n{run_json}\n```\n</details>\n"
        sections += ["## Run record\n", details]
    return "\n".join(section for section in sections if section)


def describe(record: dict) -> str:
    kind = {"merged": "merged weights (safetensors)", "adapter": "the adapter alone", "onnx": "an ONNX graph"}
    quantized = f", quantised to {record['quantize']}" if record.get("quantize") else ""
    return f"{kind[record['format']]} in {record['dtype']}{quantized}"


def loading_code(record: dict) -> str:
    auto = "AutoModelForCausalLM" if record["task"] == "causal_lm" else "AutoModelForSequenceClassification"
    if record["format"] == "onnx":
        return (
            "import onnxruntime\n\nsession = onnxruntime.InferenceSession('model.onnx')\n"
            "logits = session.run(['logits'], {'input_ids': ids, 'attention_mask': mask})[0]"
        )
    if record["format"] == "merged":
        return f"from transformers import {auto}, AutoTokenizer\n\nmodel = {auto}.from_pretrained(PATH)"
    return record["method"]["adapter_loading_code"]


def training_facts(run: dict) -> dict:
    trainer = ((run.get("config") or {}).get("trainer")) or {}
    progress = run.get("progress") or {}
    hardware = run.get("hardware") or {}
    return {
        "status": run.get("status"),
        "global step": progress.get("global_step"),
        "epoch": progress.get("epoch"),
        "precision": trainer.get("precision"),
        "seed": run.get("seed"),
        "hardware": ", ".join(filter(None, [hardware.get("cpu"), *hardware.get("gpus", [])])) or None,
        "code": (run.get("git") or {}).get("commit"),
        "started": run.get("started_at"),
    }


def data_facts(run: dict) -> dict:
    data = run["data"]
    return {
        "fingerprint": data.get("fingerprint"),
        **{f"{split} file": path for split, path in (data.get("files") or {}).items()},
        **{f"{split} examples": count for split, count in (data.get("examples") or {}).items()},
    }


def metrics(run: dict) -> dict:
    found = run.get("metrics") or {}
    return {
        **{f"{name} (best)": value for name, value in (found.get("best") or {}).items()},
        **{f"{name} (final)": value for name, value in (found.get("final") or {}).items()},
    }


def flatten(values: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1e-4}} -> {"optim.lr": 1e-4}"""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def table(values: dict) -> str:
    rows = [f"| {key} | {format_value(value)} |" for key, value in values.items() if value is not None]
    return "| | |\n|---|---|\n" + "\n".join(rows) + "\n" if rows else ""


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")
