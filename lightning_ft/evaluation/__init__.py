"""Evaluation: benchmarks, cross-validation and human evaluation."""
