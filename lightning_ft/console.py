"""What the console shows a user: the libraries' lines that are known to be harmless here are silenced, each by its
own message (never a whole category or logger), so that what a user must see stands out.

Each entry says why it is harmless. Anything not listed still reaches the console.
"""

from __future__ import annotations

import logging
import re
import warnings

# (message regex, category): Python warnings raised inside the libraries during a lightning-ft command.
WARNINGS = (
    # peft (0.21) reads transformers' deprecated alias when it wraps a model; nothing for a user to change.
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # A run without validation data returns no val loader ([]), which is how Lightning is told to skip validation.
    (r"Total length of `list` across ranks is zero", UserWarning),
    # The summary's size estimate in MB is off under bf16/fp16; the parameter counts it prints are right.
    (r"Precision .* is not supported by the model summary", UserWarning),
    # Lightning 2.6's own pytree helper uses torch's deprecated LeafSpec check; nothing for a user to change.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning),
    # We hand LightningCLI the (filtered) command line ourselves; its warning about that is meant for other cases.
    (r"LightningCLI's args parameter", UserWarning),
)
# (logger, message regex): log lines of the libraries.
LOG_LINES = (
    # Lightning advertises its cloud products at every fit.
    ("lightning.fabric.utilities.rank_zero", r"💡 Tip: "),
    ("lightning.pytorch.utilities.rank_zero", r"💡 Tip: "),
    # bitsandbytes looks for an optional faster CPU kernel (the `kernels` package) on CPUs with AVX512-BF16 and
    # says so when it is missing; it then uses its built-in kernel, which computes the same.
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class DropMessages(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_known_noise() -> None:
    """Silence the lines above in this process (every process of a run calls this: DDP re-runs the command)."""
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    quiet_log_lines()


def quiet_log_lines() -> None:
    """Only the log lines (importing lightning_ft does this, before a library can log them; a program that imports
    lightning_ft keeps its own warning filters)."""
    for name, message in LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and f.pattern.pattern == message for f in logger.filters):
            logger.addFilter(DropMessages(message))
