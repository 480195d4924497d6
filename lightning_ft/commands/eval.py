"""`lightning-ft eval`: standard benchmarks (MMLU, HellaSwag, GSM8K, HumanEval, TruthfulQA) on a model or checkpoint.

Offline from local files, through lm-evaluation-harness; a table and JSON, optionally against a baseline.
"""

from __future__ import annotations

from pathlib import Path

from lightning_ft.commands.parsing import command_parser
from lightning_ft.constants import DType
from lightning_ft.errors import UserError
from lightning_ft.files import output_file, write_json_atomically

TASKS = "mmlu, hellaswag, gsm8k, gsm8k_cot, humaneval, truthfulqa (or mmlu_<subject>)"


def parser():
    parser = command_parser("eval", __doc__)
    add = parser.add_argument
    add("--model", type=str, required=True, help="model dir, or a .ckpt from `lightning-ft fit`")
    add("--tasks", type=str, required=True, help=f"comma-separated: {TASKS}")
    add("--data_dir", type=str, default="../shared/datasets", help="benchmark files, in their published layout")
    add("--limit", type=int | None, default=None, help="at most N items per task (per MMLU subject): quick checks")
    add(
        "--num_fewshot",
        type=int | None,
        default=None,
        help="few-shot examples: mmlu (default 5, as published), gsm8k (5) and gsm8k_cot (8), as lm-eval",
    )
    add("--output", type=str | None, default=None, help="write the results as JSON here")
    add("--baseline", type=str | None, default=None, help="an earlier --output JSON: show the change of each score")
    add("--allow_code_execution", action="store_true", help="needed for humaneval: runs model-written code")
    add("--num_samples", type=int, default=1, help="humaneval completions per problem (1: greedy)")
    add("--k", type=str, default="1", help="humaneval pass@k for these k, comma-separated (each <= num_samples)")
    add("--temperature", type=float, default=0.8, help="humaneval sampling temperature when num_samples > 1")
    add("--timeout", type=float, default=10.0, help="humaneval seconds per sample before it counts as failed")
    add("--gsm8k_max_new_tokens", type=int | None, default=None, help="gsm8k(_cot) new tokens (default: lm-eval's 256)")
    add("--humaneval_max_new_tokens", type=int, default=1024, help="humaneval new tokens (lm-eval's humaneval: 1024)")
    add("--batch_size", type=int, default=8, help="batch size of the lm-eval HF model wrapper")
    add("--device", type=str | None, choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    add("--dtype", type=DType, default="auto", help="the weights' dtype (auto: as stored)")
    return parser


def main(argv: list[str]) -> None:
    """lightning-ft eval --model DIR_OR_CKPT --tasks mmlu,hellaswag,gsm8k,humaneval,truthfulqa [--limit N] ..."""
    args = parser().parse_args(argv)
    import torch

    from lightning_ft.evaluation.benchmarks import evaluate_model, plan, print_table, read_baseline

    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    try:
        ks = [int(k) for k in args.k.split(",")]
    except ValueError:
        raise UserError(f"--k: expected comma-separated whole numbers, got {args.k!r}") from None
    data_dir = Path(args.data_dir).expanduser()
    plan(tasks, data_dir, allow_code_execution=args.allow_code_execution)  # fail before loading the model
    baseline = read_baseline(args.baseline) if args.baseline else None
    output = output_file(args.output) if args.output else None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    options = {name: args[name] for name in ("limit", "num_fewshot", "allow_code_execution", "num_samples")}
    options |= {name: args[name] for name in ("gsm8k_max_new_tokens", "humaneval_max_new_tokens")}
    options |= {name: args[name] for name in ("temperature", "timeout")}
    report = evaluate_model(
        args.model, tasks, data_dir, device=device, dtype=args.dtype, batch_size=args.batch_size, ks=ks, **options
    )
    print_table(report, baseline)
    if output is not None:
        write_json_atomically(output, report)
        print(f"results: {output}")
