"""`lightning-ft compare`: runs side by side, best first, as a table or an HTML/Markdown report.

What differs, method, trainable %, metrics, tokens/s, peak memory and status; with --output, a report with loss
curves and metric bars.
"""

from __future__ import annotations

from lightning_ft.commands.parsing import command_parser
from lightning_ft.tracking.compare import compare


def parser():
    parser = command_parser("compare", __doc__)
    parser.add_argument("runs", type=str, nargs="*", default=[], help="run dirs or globs (runs/*)")
    parser.add_argument("--wandb", type=str | None, default=None, help="also this W&B project's runs (ENTITY/PROJECT)")
    parser.add_argument("--metric", type=str, default="val_loss", help="sort by this metric (lower is better)")
    parser.add_argument("--output", type=str | None, default=None, help="report.html or report.md; PNGs beside it")
    return parser


def main(argv: list[str]) -> None:
    """lightning-ft compare RUN_DIR_OR_GLOB... [--wandb ENTITY/PROJECT] [--metric val_loss] [--output report.html]"""
    args = parser().parse_args(argv)
    compare(args.runs, metric=args.metric, output=args.output, wandb=args.wandb)
