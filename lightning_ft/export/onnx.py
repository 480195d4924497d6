"""ONNX: the model's forward (token ids + attention mask -> logits) as `model.onnx`, checked in onnxruntime.

Exported with torch's own exporter (torch.export, then onnxscript), with the batch and sequence dimensions left
dynamic; optimum's exporter (optimum-onnx 0.1.0) pins transformers < 4.58. A causal LM is exported without KV-cache
inputs: the file scores and classifies, and generates by re-running the whole prefix per token (for cached
decoding, serve the merged export, or build a decoder from it with onnxruntime-genai's model builder; not tried here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from lightning_ft.errors import UserError, first_line
from lightning_ft.export.check import TOLERANCE, compare

ONNX_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask")


def require_onnx() -> None:
    """Fail before any model loads when the optional packages are missing."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            raise UserError(f"--format onnx needs {name}: pip install 'lightning-ft[export]'")


class Logits(nn.Module):
    """The model as ONNX sees it: two integer tensors in, the logits out (no cache, no dict outputs)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.options = {"use_cache": False} if task == "causal_lm" else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **self.options).logits


def write_onnx(model: nn.Module, task: str, directory: Path, probe: dict[str, torch.Tensor]) -> None:
    """Trace `model` (fp32, eval mode) on the probe batch into directory/model.onnx."""
    wrapper = Logits(model.float(), task).eval()
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        # Its progress lines, and warnings about its own internals (axis renaming, pytree deprecations, torchvision
        # operators it cannot register), would drown the result; failures still raise.
        registration = logging.getLogger("torch.onnx._internal.exporter._registration")
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), quiet(registration):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (probe["input_ids"], probe["attention_mask"]),
                str(directory / ONNX_FILE),
                dynamo=True,
                input_names=list(INPUTS),
                output_names=["logits"],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
                verbose=False,
            )
    except Exception as err:  # torch.export's reasons run long; the first line names the construct
        raise UserError(f"--format onnx: this model does not trace to ONNX ({first_line(err)})") from err


@contextlib.contextmanager
def quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_onnx(directory: Path) -> None:
    """Dynamic int8 in onnxruntime's own quantiser: weights stored in int8, activations quantised per batch. The
    result replaces model.onnx and its weights file (external data: the only way past protobuf's 2 GB)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, quantized = directory / ONNX_FILE, directory / "quantized.onnx"
    quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8)
    graph = onnx.load(str(quantized))  # with its weights, wherever the quantiser put them
    for stale in directory.glob("*.onnx*"):
        stale.unlink()
    onnx.save_model(graph, str(source), save_as_external_data=True, location=ONNX_FILE + ".data")


def run_onnx(directory: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(directory / ONNX_FILE), providers=["CPUExecutionProvider"])
    feeds = {name: inputs[name].numpy() for name in INPUTS}
    return torch.from_numpy(session.run(["logits"], feeds)[0]).float()


def check_onnx(directory: Path, reference: torch.Tensor, inputs: dict[str, torch.Tensor], strict: bool) -> dict:
    """Run the file in onnxruntime on `inputs` and compare with the PyTorch logits; `strict` (fp32, unquantised)
    fails the export beyond the fp32 tolerance."""
    result = compare(reference, run_onnx(directory, inputs))
    if strict and result["relative_diff"] > TOLERANCE[torch.float32]:
        raise UserError(
            f"--format onnx: onnxruntime's logits differ from PyTorch's by {result['relative_diff']:.2e} of their "
            f"scale (tolerance {TOLERANCE[torch.float32]:.0e}); nothing was written"
        )
    return result
