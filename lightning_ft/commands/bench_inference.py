"""`lightning-ft bench-inference`: generation latency, time to first token and tokens/s of a causal LM per batch size.

p50/p95/p99 latency, with and without the KV cache, optionally in dynamic int8.
"""

from __future__ import annotations

from pathlib import Path

from lightning_ft.commands.parsing import command_parser
from lightning_ft.files import write_json_atomically


def parser():
    from lightning_ft.evaluation.inference import InferenceBench

    parser = command_parser("bench-inference", __doc__)
    parser.add_class_arguments(InferenceBench, as_group=False)
    return parser


def main(argv: list[str]) -> None:
    """lightning-ft bench-inference --model DIR_OR_CKPT [--batch_sizes 1,4,16] [--new_tokens 64] ..."""
    from lightning_ft.evaluation.inference import InferenceBench, print_table, run

    bench = InferenceBench(**parser().parse_args(argv))
    report = run(bench)
    print_table(report)
    if bench.output:
        write_json_atomically(Path(bench.output), report)
        print(f"results: {bench.output}")
