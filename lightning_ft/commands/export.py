"""`lightning-ft export`: a fit checkpoint as a Hugging Face model, peft adapter, int8/nf4 or ONNX, with a model card.

Merged or the adapter alone in peft's format; checked against the trained model before it is put in place.
"""

from __future__ import annotations

from lightning_ft.commands.parsing import command_parser
from lightning_ft.export.registry import REGISTRY_FILE


def parser():
    parser = command_parser("export", __doc__)
    add = parser.add_argument
    add("--ckpt", type=str, required=True, help="a one-file checkpoint of `lightning-ft fit`")
    add("--output", type=str, required=True, help="the folder to write (refused when not empty, see --overwrite)")
    add("--merge", action="store_true", help="fold the adapter into the base: plain transformers weights")
    add(
        "--dtype",
        type=str | None,
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="weights' dtype (default: the base model's own)",
    )
    add(
        "--quantize",
        type=str | None,
        choices=["int8", "nf4"],
        default=None,
        help="bitsandbytes int8 / nf4 (onnx: int8 only)",
    )
    add("--format", type=str, choices=["hf", "onnx"], default="hf", help="hf: safetensors + configs; onnx: model.onnx")
    add("--base", type=str | None, default=None, help="the base model dir, when not where training read it")
    add("--overwrite", action="store_true", help="replace a non-empty --output (and its tag in the registry)")
    add(
        "--version",
        type=str | None,
        default=None,
        help="release tag (e.g. v1.1): recorded in the export and the registry",
    )
    add(
        "--registry",
        type=str | None,
        default=None,
        help=f"the registry to add --version to (default: {REGISTRY_FILE} beside --output)",
    )
    return parser


def main(argv: list[str]) -> None:
    """lightning-ft export --ckpt PATH --output DIR [--merge] [--dtype bfloat16|float16|float32] [--quantize int8|nf4]
    [--format hf|onnx] [--base DIR] [--overwrite] [--version TAG [--registry models.json]]"""
    args = parser().parse_args(argv)
    from lightning_ft.export.exporter import ExportRequest, export

    export(ExportRequest(**args))
