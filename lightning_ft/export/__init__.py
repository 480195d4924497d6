"""Shipping a fine-tune: merged or adapter-only Hugging Face exports, quantised weights, ONNX, a model card."""

from lightning_ft.export.hf import load_exported

__all__ = ["load_exported"]
