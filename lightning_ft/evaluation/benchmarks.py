"""`lightning-ft eval`: MMLU, HellaSwag, GSM8K (and gsm8k_cot), HumanEval and TruthfulQA on local files, via lm-eval.

Scores are meant to be comparable with published ones, so the harness does the work where it can: MMLU, HellaSwag
and GSM8K run as lm-eval's own tasks (same prompts, few-shot sampling, filters and metrics): the task YAML of
a run includes lm-eval's installed config (OFFICIAL) and only points it at local files (LOCAL).
TruthfulQA runs through lm-eval too, from the authors' CSV, with MC1/MC2
computed as the authors' code does (`truthfulqa_scores`). HumanEval is scored here: lm-eval would execute the
model's code in-process, while we run every sample in `sandbox` and compute pass@k ourselves.

Nothing is downloaded. The published files (see README of each folder of ../shared/datasets) are read and checked
here, line by line, and written as JSONL with one lm-eval task YAML per task into a temp dir per run; the data dir
is never written to.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub / datasets are first imported
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets
import numpy as np
import torch
import yaml
from rich.console import Console
from rich.table import Table

from lightning_ft.errors import UserError
from lightning_ft.evaluation import sandbox
from lightning_ft.evaluation.benchmark_files import (
    read_gsm8k,
    read_hellaswag,
    read_humaneval,
    read_mmlu,
    read_truthfulqa,
)
from lightning_ft.trained import load_causal_lm

try:  # the optional `eval` extra
    import lm_eval.tasks
    from lm_eval import simple_evaluate
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager
except ImportError:  # pragma: no cover - depends on the installation
    simple_evaluate = None

TASKS = ("mmlu", "hellaswag", "gsm8k", "gsm8k_cot", "humaneval", "truthfulqa")
TASKS_DIR = Path(__file__).parent / "tasks"
# lm-eval's own task configs, included by reference: only the data source is ours (LOCAL).
OFFICIAL = {
    "mmlu": "mmlu/default/_default_template_yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "gsm8k": "gsm8k/gsm8k.yaml",
    "gsm8k_cot": "gsm8k/gsm8k-cot.yaml",
    "humaneval": "humaneval/humaneval.yaml",
}
LOCAL = {"dataset_path": "json", "dataset_name": None}
MMLU_SHOTS = 5  # Hendrycks et al.'s protocol; lm-eval's template sets none (0), published scores use 5
FILES = {
    "hellaswag": "hellaswag_val/hellaswag_val.jsonl.gz",
    "gsm8k": "gsm8k/test.jsonl",
    "gsm8k_cot": "gsm8k/test.jsonl",
    "humaneval": "humaneval/HumanEval.jsonl.gz",
    "truthfulqa": "truthfulqa/TruthfulQA.csv",
}
GSM8K_TRAIN = "gsm8k/train.jsonl"
# lm-eval result keys ("metric,filter") -> our metric names, per task.
METRICS = {
    "mmlu": {"acc": "acc,none"},
    "hellaswag": {"acc": "acc,none", "acc_norm": "acc_norm,none"},
    "gsm8k": {"exact_match": "exact_match,strict-match", "exact_match_flexible": "exact_match,flexible-extract"},
    "gsm8k_cot": {"exact_match": "exact_match,strict-match", "exact_match_flexible": "exact_match,flexible-extract"},
    "truthfulqa": {"mc1": "mc1,none", "mc2": "mc2,none"},
}
HUMANEVAL_MAX_NEW_TOKENS = 1024  # lm-eval's humaneval.yaml (checked against it in the tests)
SEED = 1234  # lm-eval's default seed, also for HumanEval sampling


def official_config(task: str) -> dict:
    """lm-eval's config of `task` (includes resolved, `!function` left as names)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(Path(lm_eval.tasks.__file__).parent / OFFICIAL[task], resolve_func=False)


def truthfulqa_scores(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """MC1: the best answer's log-likelihood is strictly above every false answer's (a tie is a miss).
    MC2: the probability mass on the true answers, normalised over all answers (Lin et al. 2021)."""
    ll = np.array([loglikelihood for loglikelihood, _ in results])
    true = np.array(doc["labels"]) == 1
    probs = np.exp(ll - ll.max())  # shifted: the same ratios, without underflow on long answers
    return {"mc1": float(ll[doc["best"]] > ll[~true].max()), "mc2": float(probs[true].sum() / probs.sum())}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021: 1 - C(n-c, k) / C(n, k), from n samples of which c pass."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# --------------------------------------------------------------------------------------------- planning a run


def _required(data_dir: Path, relative: str, task: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise UserError(f"{task}: missing data file {relative} (looked in {data_dir.resolve()})")
    return path


def _mmlu_subjects(data_dir: Path) -> list[str]:
    test_dir = data_dir / "mmlu" / "test"
    subjects = sorted(p.name.removesuffix("_test.csv") for p in test_dir.glob("*_test.csv"))
    if not subjects:
        raise UserError(f"mmlu: no <subject>_test.csv files in {test_dir.resolve()} (set --data_dir)")
    return subjects


def plan(tasks: list[str], data_dir: Path, *, allow_code_execution: bool = False) -> list[str]:
    """The tasks to run, `mmlu` expanded to `mmlu_<subject>` for each subject; fails on any unknown name,
    missing file or missing permission before a model is loaded."""
    if not tasks:
        raise UserError(f"--tasks: give one or more of {', '.join(TASKS)} (or mmlu_<subject>)")
    if not data_dir.is_dir():
        raise UserError(f"benchmark data dir {data_dir.resolve()} does not exist (set --data_dir)")
    names = []
    for task in tasks:
        if task == "mmlu":
            names += ["mmlu"] + [f"mmlu_{subject}" for subject in _mmlu_subjects(data_dir)]
        elif task.startswith("mmlu_"):
            if task.removeprefix("mmlu_") not in _mmlu_subjects(data_dir):
                raise UserError(
                    f"unknown MMLU subject '{task}': no mmlu/test/{task[5:]}_test.csv in {data_dir.resolve()}"
                )
            names.append(task)
        elif task in FILES:
            _required(data_dir, FILES[task], task)
            names.append(task)
        else:
            raise UserError(f"unknown task '{task}' (known: {', '.join(TASKS)}, or mmlu_<subject> for one subject)")
    if "humaneval" in names and not allow_code_execution:
        raise UserError(
            "humaneval runs the code the model writes on this machine (in a sandbox that limits but cannot rule "
            "out harm); add --allow_code_execution to accept that"
        )
    return list(dict.fromkeys(names))


def _write_jsonl(path: Path, docs: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    return str(path)


def _write_task(work: Path, name: str, template: Path, splits: dict[str, list[dict]], **overrides) -> None:
    """A task YAML that includes `template` (lm-eval's own config, or ours) and points it at this run's JSONL files."""
    files = {split: _write_jsonl(work / "data" / f"{name}.{split}.jsonl", docs) for split, docs in splits.items()}
    config = {
        "include": str(template),
        "task": name,
        **LOCAL,
        "dataset_kwargs": {"data_files": files, "cache_dir": str(work / "cache")},
        **overrides,
    }
    (work / "tasks").mkdir(exist_ok=True)
    (work / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _official_path(task: str) -> Path:
    return Path(lm_eval.tasks.__file__).parent / OFFICIAL[task]


def _generation(task: str, max_new_tokens: int | None) -> dict:
    """The official generation kwargs, with `max_gen_toks` only when the user set a length."""
    kwargs = dict(official_config(task)["generation_kwargs"])
    return {"generation_kwargs": kwargs | {"max_gen_toks": max_new_tokens}} if max_new_tokens else {}


def _prepare(
    names: list[str], data_dir: Path, work: Path, num_fewshot: int | None, gsm8k_max_new_tokens: int | None
) -> dict[str, int]:
    """Read and check every file, write the lm-eval tasks; returns the few-shot count of each task."""
    shots = {}
    for name in names:
        if name.startswith("mmlu_"):
            subject = name.removeprefix("mmlu_")
            k = MMLU_SHOTS if num_fewshot is None else num_fewshot
            splits = {"test": read_mmlu(_required(data_dir, f"mmlu/test/{subject}_test.csv", name))}
            if k:
                dev = _required(data_dir, f"mmlu/dev/{subject}_dev.csv", name)
                splits["dev"] = read_mmlu(dev)
                if len(splits["dev"]) < k:
                    raise UserError(f"{name}: --num_fewshot {k} but {dev} has only {len(splits['dev'])} questions")
            topic = subject.replace("_", " ")
            description = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
            extra = {} if k else {"fewshot_split": None}
            _write_task(work, name, _official_path("mmlu"), splits, num_fewshot=k, description=description, **extra)
            shots[name] = k
        elif name == "hellaswag":
            splits = {"validation": read_hellaswag(data_dir / FILES[name])}
            _write_task(work, name, _official_path(name), splits, training_split=None)
            shots[name] = official_config(name).get("num_fewshot", 0)
        elif name in ("gsm8k", "gsm8k_cot"):
            official = official_config(name).get("num_fewshot", 0)
            k = official if num_fewshot is None else num_fewshot
            splits = {"test": read_gsm8k(data_dir / FILES[name])}
            extra = _generation(name, gsm8k_max_new_tokens)
            if k and name == "gsm8k" and (num_fewshot or (data_dir / GSM8K_TRAIN).is_file()):
                splits["train"] = read_gsm8k(_required(data_dir, GSM8K_TRAIN, "gsm8k few-shot"))
            elif k and name == "gsm8k":  # the default 5 shots, but no train file to draw them from
                print(f"note: gsm8k runs zero-shot: no {GSM8K_TRAIN} in {data_dir.resolve()}", file=sys.stderr)
                k = 0
            if not k and name == "gsm8k":
                extra |= {"training_split": None, "fewshot_split": None}
            extra["num_fewshot"] = k  # gsm8k_cot's 8 exemplars are written into lm-eval's config
            _write_task(work, name, _official_path(name), splits, **extra)
            shots[name] = k
        elif name == "truthfulqa":
            splits = {"validation": read_truthfulqa(data_dir / FILES[name])}
            _write_task(work, name, TASKS_DIR / "truthfulqa.yaml", splits)
            shots[name] = 0
        elif name == "humaneval":
            shots[name] = 0
    return shots


# ------------------------------------------------------------------------------------------------ evaluating


def _run_harness(lm, names: list[str], work: Path, limit: int | None):
    manager = TaskManager(include_path=str(work / "tasks"), include_defaults=False)
    output = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=False)
    return output["results"], {name: counts["effective"] for name, counts in output["n-samples"].items()}


def _metrics(task: str, raw: dict) -> dict[str, float]:
    metrics = {}
    for ours, key in METRICS["mmlu" if task.startswith("mmlu_") else task].items():
        metrics[ours] = float(raw[key])
        stderr = raw.get(key.replace(",", "_stderr,"))
        if isinstance(stderr, float) and math.isfinite(stderr):
            metrics[f"{ours}_stderr"] = stderr
    return metrics


def score_humaneval(
    lm,
    problems: list[dict],
    *,
    num_samples: int,
    ks: list[int],
    max_new_tokens: int,
    temperature: float,
    timeout: float,
) -> tuple[dict[str, float], dict[str, int]]:
    """Generate `num_samples` completions per problem, run each with its tests in the sandbox, average pass@k."""
    do_sample = num_samples > 1
    if do_sample:
        torch.manual_seed(SEED)
    stop = official_config("humaneval")["generation_kwargs"]["until"]  # Chen et al. 2021's stop sequences
    gen_kwargs = {"until": stop, "max_gen_toks": max_new_tokens, "do_sample": do_sample}
    gen_kwargs["temperature"] = temperature if do_sample else 0.0
    requests = [
        Instance("generate_until", problem, (problem["prompt"], dict(gen_kwargs)), n, ("humaneval", i, num_samples))
        for i, problem in enumerate(problems)
        for n in range(num_samples)
    ]
    completions = lm.generate_until(requests)
    programs = []
    for request, completion in zip(requests, completions, strict=True):
        for sequence in stop:  # HFLM stops there already; a scripted LM may not
            completion = completion.split(sequence)[0]
        problem = request.doc
        programs.append(f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n")
    outcomes = sandbox.run_programs(programs, timeout=timeout)
    per_problem = [outcomes[i : i + num_samples] for i in range(0, len(outcomes), num_samples)]
    passed = [sum(o.status == "passed" for o in samples) for samples in per_problem]
    metrics = {f"pass@{k}": float(np.mean([pass_at_k(num_samples, c, k) for c in passed])) for k in ks}
    counts = {status: sum(o.status == status for o in outcomes) for status in ("passed", "failed", "timeout")}
    return metrics, counts


def evaluate(
    lm,
    tasks: list[str],
    data_dir: Path,
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    allow_code_execution: bool = False,
    num_samples: int = 1,
    ks: list[int] | None = None,
    gsm8k_max_new_tokens: int | None = None,
    humaneval_max_new_tokens: int | None = None,
    temperature: float = 0.8,
    timeout: float = 10.0,
) -> dict:
    """Scores per task (and per MMLU subject, with their question-weighted average as `mmlu`), JSON-serialisable.

    `lm` is any lm_eval.api.model.LM: HFLM around our model, or a scripted one. Every task runs with lm-eval's
    official settings (GSM8K 5 shots, gsm8k_cot 8, MMLU 5 as published); `num_fewshot` overrides MMLU's and
    GSM8K's, HellaSwag, TruthfulQA (fixed primer) and HumanEval stay zero-shot. Generation lengths default to
    the official ones (gsm8k: lm-eval's 256, humaneval 1024); each task has its own. HumanEval draws
    `num_samples` completions per problem (greedy for one, else sampled at `temperature`) and reports pass@k
    for each k in `ks`.
    """
    if simple_evaluate is None:
        raise UserError("lightning-ft eval needs lm-evaluation-harness: pip install 'lightning-ft[eval]'")
    ks = ks or [1]
    if num_samples < 1 or any(k < 1 or k > num_samples for k in ks):
        raise UserError(f"--k {','.join(map(str, ks))} needs 1 <= k <= --num_samples ({num_samples})")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    for flag, value in (("gsm8k", gsm8k_max_new_tokens), ("humaneval", humaneval_max_new_tokens)):
        if value is not None and value < 1:
            raise UserError(f"--{flag}_max_new_tokens must be at least 1, got {value}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num_fewshot must be 0 or more, got {num_fewshot}")
    names = plan(tasks, data_dir, allow_code_execution=allow_code_execution)
    harness = [name for name in names if name not in ("mmlu", "humaneval")]
    results, samples, details = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="lft-eval-") as work:
        shots = _prepare(names, data_dir, Path(work), num_fewshot, gsm8k_max_new_tokens)
        problems = read_humaneval(data_dir / FILES["humaneval"])[:limit] if "humaneval" in names else []
        if harness:
            raw, samples = _run_harness(lm, harness, Path(work), limit)
            results = {name: _metrics(name, raw[name]) for name in harness}
    if "mmlu" in names:
        subjects = [name for name in harness if name.startswith("mmlu_")]
        total = sum(samples[name] for name in subjects)
        results = {"mmlu": {"acc": sum(results[n]["acc"] * samples[n] for n in subjects) / total}, **results}
        samples["mmlu"] = total
    if problems:
        results["humaneval"], details["humaneval"] = score_humaneval(
            lm,
            problems,
            num_samples=num_samples,
            ks=ks,
            max_new_tokens=humaneval_max_new_tokens or HUMANEVAL_MAX_NEW_TOKENS,
            temperature=temperature,
            timeout=timeout,
        )
        samples["humaneval"] = len(problems)
        details["humaneval"]["sandbox"] = sandbox.isolation()
    config = {
        "tasks": tasks,
        "data_dir": str(data_dir.resolve()),
        "limit": limit,
        "num_fewshot": {name: shots[name] for name in names if name in shots},
        "max_new_tokens": {  # 256: lm-eval's default where its gsm8k configs set none
            **{name: gsm8k_max_new_tokens or 256 for name in names if name.startswith("gsm8k")},
            **({"humaneval": humaneval_max_new_tokens or HUMANEVAL_MAX_NEW_TOKENS} if problems else {}),
        },
        "lm_eval_version": importlib.metadata.version("lm_eval"),
    }
    if problems:
        sampled_at = temperature if num_samples > 1 else 0.0
        config["humaneval"] = {"num_samples": num_samples, "k": ks, "temperature": sampled_at, "timeout_s": timeout}
    ordered = {name: results[name] for name in names if name in results}
    return {"results": ordered, "samples": samples, "details": details, "config": config}


# ------------------------------------------------------------------------------------------- results


def read_baseline(path: str) -> dict:
    try:
        baseline = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"--baseline: cannot read {path}: {err}") from None
    if not isinstance(baseline, dict) or not isinstance(baseline.get("results"), dict):
        raise UserError(f"--baseline: {path} is not an output of lightning-ft eval (no 'results' object)")
    return baseline["results"]


def print_table(report: dict, baseline: dict | None = None) -> None:
    """One row per task and metric; with a baseline (an earlier report's results), the change of each score."""
    table = Table(title="lightning-ft eval")
    for column in ("task", "metric", "value", "± stderr") + (("Δ vs baseline",) if baseline is not None else ()):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task, metrics in report["results"].items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr"):
                continue
            stderr = metrics.get(f"{metric}_stderr")
            row = [task, metric, f"{value:.4f}", f"{stderr:.4f}" if stderr is not None else ""]
            if baseline is not None:
                old = baseline[task].get(metric) if isinstance(baseline.get(task), dict) else None
                row.append(f"{value - old:+.4f}" if isinstance(old, int | float) else "n/a")
            table.add_row(*row)
    Console().print(table)


def evaluate_model(
    model: str, tasks: list[str], data_dir: Path, *, device: str, dtype: str, batch_size: int, **options
):
    """Load `model` (a model dir or a `lightning-ft fit` checkpoint) and run `evaluate` on it through lm-eval's
    Hugging Face wrapper; `options` are evaluate's."""
    if simple_evaluate is None:
        raise UserError("lightning-ft eval needs lm-evaluation-harness: pip install 'lightning-ft[eval]'")
    from lm_eval.models.huggingface import HFLM

    # lm-eval's per-task notes and its warning about being handed a model object, and the datasets' progress
    # bars for our small JSONL files, would drown the table.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    loaded, tokenizer = load_causal_lm(model, dtype)
    lm = HFLM(pretrained=loaded.to(device), tokenizer=tokenizer, batch_size=batch_size)
    report = evaluate(lm, tasks, data_dir, **options)
    report["config"] = {"model": model, "device": device, **report["config"]}
    return report
