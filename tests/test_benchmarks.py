"""`lightning-ft eval`: scoring proved with scripted LMs on tiny fixtures in the published formats, the real HFLM path
on the tiny model, the real files when ../shared/datasets is there, the sandbox, and one-line errors."""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import secrets
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SHARED_DATASETS
from lm_eval.api.model import LM

from lightning_ft.commands.eval import main
from lightning_ft.commands.eval import parser as eval_parser
from lightning_ft.errors import UserError
from lightning_ft.evaluation import sandbox
from lightning_ft.evaluation.benchmark_files import read_hellaswag
from lightning_ft.evaluation.benchmarks import (
    HUMANEVAL_MAX_NEW_TOKENS,
    LOCAL,
    _official_path,
    _prepare,
    evaluate,
    official_config,
    pass_at_k,
)
from lightning_ft.trained import load_causal_lm

TASKS = ("mmlu", "hellaswag", "gsm8k", "humaneval", "truthfulqa")  # the fixtures' Oracle answers gsm8k's format
MMLU = {  # subject -> (question, choices, gold index); gold letters balanced, so always-"A" scores exactly 25%
    "toy_math": [
        ("What is 1 + 1?", ["2", "3", "4", "5"], 0),
        ("What is 2 + 2?", ["3", "4", "5", "6"], 1),
        ("What is 3 + 3?", ["4", "5", "6", "7"], 2),
        ("What is 4 + 4?", ["5", "6", "7", "8"], 3),
    ],
    "toy_animals": [
        ("Which animal barks?", ["cat", "cow", "owl", "dog"], 3),
        ("Which animal moos?", ["pig", "bee", "cow", "ant"], 2),
        ("Which animal hoots?", ["fox", "owl", "cat", "dog"], 1),
        ("Which animal buzzes?", ["bee", "cow", "pig", "fox"], 0),
    ],
}
HELLASWAG = [  # (query, endings of equal length, label): a constant LM picks ending 0 by acc and by acc_norm
    (f"Cooking: A man cracks egg number {i}. He", [f"option {c} {i}." for c in "abcd"], i) for i in range(4)
]
GSM8K = [("Tom has 3 apples and gets 4 more. How many?", 7), ("What is 3 times 4?", 12), ("Sum 10, 10 and 10.", 30)]
GSM8K.append(("What is 9 minus 4?", 5))
HUMANEVAL = [  # (entry point, signature, canonical body, test); only `zero` passes with "return 0"
    ("zero", "def zero() -> int:", "    return 0\n", "    assert candidate() == 0\n"),
    ("add", "def add(a: int, b: int) -> int:", "    return a + b\n", "    assert candidate(1, 2) == 3\n"),
    ("double", "def double(x: int) -> int:", "    return 2 * x\n", "    assert candidate(3) == 6\n"),
    ("is_even", "def is_even(n: int) -> bool:", "    return n % 2 == 0\n", "    assert candidate(4) != candidate(3)\n"),
]
TRUTHFULQA = [  # (question, best, correct, incorrect)
    ("What color is the sky on a clear day?", "The sky is blue", "The sky is blue; Blue", "Green; The sky is red"),
    ("How many legs does a spider have?", "Eight", "Eight; A spider has eight legs", "Six; Ten; Four"),
    ("Can pigs fly?", "No, pigs cannot fly", "No, pigs cannot fly", "Yes, pigs can fly"),
]
CHANCE_MC2 = (2 / 4 + 2 / 5 + 1 / 2) / 3  # true answers / all answers, per question


def humaneval_prompt(signature: str) -> str:
    return f'{signature}\n    """Do the obvious thing."""\n'


def write_csv(path: Path, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """Every benchmark in its published layout and format (MMLU: header row and 0-3 answers, as our copy)."""
    root = tmp_path_factory.mktemp("benchmarks")
    header = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    for subject, items in MMLU.items():
        write_csv(root / f"mmlu/test/{subject}_test.csv", [header] + [[q, *c, a] for q, c, a in items])
        dev = [[f"Practice question {i} on {subject}?", "w", "x", "y", "z", i % 4] for i in range(5)]
        write_csv(root / f"mmlu/dev/{subject}_dev.csv", [header, *dev])
    hellaswag = [
        {"ind": i, "activity_label": "Cooking", "ctx": q[9:], "query": q, "endings": e, "label": g}
        for i, (q, e, g) in enumerate(HELLASWAG)
    ]
    write_jsonl(root / "hellaswag_val/hellaswag_val.jsonl.gz", hellaswag)
    write_jsonl(root / "gsm8k/test.jsonl", [{"question": q, "answer": f"Work it out.\n#### {a}"} for q, a in GSM8K])
    train = [
        {"question": f"What is {i} plus 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
        for i in range(8)
    ]
    write_jsonl(root / "gsm8k/train.jsonl", train)
    problems = [
        {
            "task_id": f"Toy/{i}",
            "prompt": humaneval_prompt(s),
            "canonical_solution": body,
            "test": f"def check(candidate):\n{test}",
            "entry_point": name,
        }
        for i, (name, s, body, test) in enumerate(HUMANEVAL)
    ]
    write_jsonl(root / "humaneval/HumanEval.jsonl.gz", problems)
    columns = ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"]
    write_csv(root / "truthfulqa/TruthfulQA.csv", [columns] + [["Adversarial", "Toy", *row, "x"] for row in TRUTHFULQA])
    return root


class Oracle(LM):
    """Knows the fixtures' answers: the item is the one whose text comes last in the context (few-shot examples
    come first); its gold continuations score 0 and everything else -1000; it generates the gold answer."""

    def __init__(self) -> None:
        super().__init__()
        self.gold: dict[str, set[str]] = {}
        self.generation: dict[str, str] = {}
        for items in MMLU.values():
            self.gold.update({q: {"ABCD"[a]} for q, _, a in items})
        self.gold.update({q: {e[g].rstrip(".")} for q, e, g in HELLASWAG})
        self.gold.update({q: {a.strip() for a in correct.split(";")} for q, _, correct, _ in TRUTHFULQA})
        self.generation.update({q: f"Work it out.\n#### {a}" for q, a in GSM8K})
        self.generation.update({humaneval_prompt(s): body for _, s, body, _ in HUMANEVAL})

    @staticmethod
    def item(context: str, table: dict) -> str:
        marker = max(table, key=context.rfind)
        assert context.rfind(marker) >= 0, context
        return marker

    def loglikelihood(self, requests):
        out = []
        for context, continuation in (r.args for r in requests):
            gold = self.gold[self.item(context, self.gold)]
            out.append((0.0 if continuation.strip().rstrip(".") in gold else -1000.0, False))
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        return [self.generation[self.item(r.args[0], self.generation)] for r in requests]


class Constant(LM):
    """The same log-likelihood for every continuation and the same text for every generation: chance level."""

    def __init__(self, generation: str = "    return 0\n#### 7") -> None:
        super().__init__()
        self.text = generation

    def loglikelihood(self, requests):
        return [(-1.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        return [self.text for _ in requests]


class HalfRight(Oracle):
    """HumanEval only: every other sample is the canonical solution, the rest `pass`."""

    def generate_until(self, requests):
        right = super().generate_until(requests)
        return [text if i % 2 == 0 else "    pass\n" for i, text in enumerate(right)]


def scores(report: dict) -> dict[str, dict[str, float]]:
    return {t: {m: v for m, v in ms.items() if not m.endswith("_stderr")} for t, ms in report["results"].items()}


# ----------------------------------------------------------------------------------------------- scoring


def test_oracle_scores_exactly_100_percent_on_every_benchmark(bench):
    report = evaluate(Oracle(), list(TASKS), bench, allow_code_execution=True)
    assert scores(report) == {
        "mmlu": {"acc": 1.0},
        "mmlu_toy_animals": {"acc": 1.0},
        "mmlu_toy_math": {"acc": 1.0},
        "hellaswag": {"acc": 1.0, "acc_norm": 1.0},
        "gsm8k": {"exact_match": 1.0, "exact_match_flexible": 1.0},
        "humaneval": {"pass@1": 1.0},
        "truthfulqa": {"mc1": 1.0, "mc2": 1.0},
    }
    counts = {"mmlu_toy_animals": 4, "mmlu_toy_math": 4, "hellaswag": 4, "gsm8k": 4, "truthfulqa": 3, "humaneval": 4}
    assert report["samples"] == {"mmlu": 8, **counts}
    shots = {"mmlu_toy_animals": 5, "mmlu_toy_math": 5, "hellaswag": 0, "gsm8k": 5, "humaneval": 0, "truthfulqa": 0}
    assert report["config"]["num_fewshot"] == shots
    assert report["config"]["max_new_tokens"] == {"gsm8k": 256, "humaneval": 1024}
    json.dumps(report)  # JSON-serialisable as it is


def test_constant_lm_scores_chance_level(bench):
    """Ties go to the first choice (lm-eval's argmax): A for MMLU, ending 0 for HellaSwag, both balanced to 1/4.
    TruthfulQA MC1 counts a tie as a miss (the authors' strict >), MC2 is then the share of true answers."""
    report = evaluate(Constant(), list(TASKS), bench, allow_code_execution=True)
    got = scores(report)
    assert got.pop("truthfulqa") == {"mc1": 0.0, "mc2": pytest.approx(CHANCE_MC2)}
    assert got == {
        "mmlu": {"acc": 0.25},
        "mmlu_toy_animals": {"acc": 0.25},
        "mmlu_toy_math": {"acc": 0.25},
        "hellaswag": {"acc": 0.25, "acc_norm": 0.25},
        "gsm8k": {"exact_match": 0.25, "exact_match_flexible": 0.25},  # "#### 7" is right for one question in four
        "humaneval": {"pass@1": 0.25},  # "return 0" solves `zero` only
    }
    assert report["details"]["humaneval"]["passed"] == 1


def test_humaneval_pass_at_k_over_several_samples(bench):
    report = evaluate(HalfRight(), ["humaneval"], bench, allow_code_execution=True, num_samples=4, ks=[1, 2])
    # each problem: n=4 samples, c=2 pass
    assert scores(report)["humaneval"] == {
        "pass@1": 0.5,
        "pass@2": pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2)),
    }
    assert report["details"]["humaneval"]["passed"] == 8


def test_mmlu_subject_task_and_fewshot_override(bench):
    report = evaluate(Oracle(), ["mmlu_toy_math"], bench, num_fewshot=0, limit=2)
    assert scores(report) == {"mmlu_toy_math": {"acc": 1.0}}
    assert report["samples"] == {"mmlu_toy_math": 2}
    assert report["config"]["num_fewshot"] == {"mmlu_toy_math": 0}


def test_pass_at_k_matches_the_formula():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k failures: some k-subset always holds a pass
    assert pass_at_k(1, 1, 1) == 1.0


# ------------------------------------------------- the same requests as lm-eval's official tasks on the same rows


def requests(tasks_dir: Path, name: str) -> list[tuple]:
    """(request type, context, continuation or generation kwargs) of every request, few-shot seeded as lm-eval."""
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict([name], TaskManager(include_path=str(tasks_dir), include_defaults=False))[name]
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(rank=0, world_size=1)
    return [(r.request_type, *r.arguments) for r in task.instances]


def official_requests(tmp_path: Path, name: str, data_files: dict[str, str], **overrides) -> list[tuple]:
    """lm-eval's own config of `name`, its data source swapped for local rows in the format it expects."""
    (tmp_path / "official").mkdir()
    config = {"include": str(_official_path(name)), "task": name, **LOCAL, "dataset_kwargs": {"data_files": data_files}}
    (tmp_path / "official" / f"{name}.yaml").write_text(json.dumps(config | overrides))
    return requests(tmp_path / "official", name)


def ours(tmp_path: Path, name: str, data_dir: Path, **options) -> list[tuple]:
    _prepare([name], data_dir, tmp_path / "ours", options.get("num_fewshot"), options.get("gsm8k_max_new_tokens"))
    return requests(tmp_path / "ours" / "tasks", name)


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets is not here")
@pytest.mark.parametrize("name", ["gsm8k", "gsm8k_cot"])
def test_gsm8k_requests_equal_lm_evals_official_task(tmp_path, name):
    """Shots (gsm8k 5 from train, gsm8k_cot its 8 exemplars), prompts and generation kwargs, request by request."""
    data = tmp_path / "data"  # the first 20 test questions; shots drawn from the whole train file
    (data / "gsm8k").mkdir(parents=True)
    head = (SHARED_DATASETS / "gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:20]
    (data / "gsm8k/test.jsonl").write_text("".join(head), encoding="utf-8")
    (data / "gsm8k/train.jsonl").symlink_to(SHARED_DATASETS / "gsm8k/train.jsonl")
    files = {"test": str(data / "gsm8k/test.jsonl"), "train": str(data / "gsm8k/train.jsonl")}
    official = official_requests(tmp_path, name, files)
    assert ours(tmp_path, name, data) == official
    assert official[0][1].count("Question:" if name == "gsm8k" else "Q:") == (6 if name == "gsm8k" else 9)
    assert "max_gen_toks" not in official[0][2]  # lm-eval's config leaves the length to the model (HFLM: 256)
    longer = ours(tmp_path / "long", name, data, gsm8k_max_new_tokens=512)
    assert [r[2] for r in longer][:1] == [official[0][2] | {"max_gen_toks": 512}]


HELLASWAG_ROWS = [  # rowanz's fields; ctx_b starts lower-case (lm-eval capitalises it) or is empty
    ("Roof shingle removal", "A man is sitting on a roof.", "he"),
    ("Clean and jerk", "A lady walks to a barbell. She bends down and grabs the pole.", "the lady"),
    ("Canoeing", "Two women are shown in a canoe. A man pulls it!", "the child and a different Man"),
    ("Home and Garden", "[header] How to rake leaves [title] Pick a rake. [step] Use a wide one.", ""),
]


def test_hellaswag_requests_equal_lm_evals_official_task_from_both_files(tmp_path):
    """rowanz's original file goes through exactly; the text re-export (ctx = ctx_a + " " + ctx_b, lm-eval's
    cleaning applied, no ctx_a/ctx_b) gets ctx_b's capital back: the same prompts where lm-eval capitalises."""
    endings = ["is using wrap.", "is ripping tiles [step] off.", "holds a cube.", "starts pulling up roofing."]
    original = [
        {"activity_label": a, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}".strip(), "endings": endings}
        | {"label": i % 4}
        for i, (a, ctx_a, ctx_b) in enumerate(HELLASWAG_ROWS)
    ]
    write_jsonl(tmp_path / "original/hellaswag_val/hellaswag_val.jsonl.gz", original)
    validation = {"validation": str(tmp_path / "original/hellaswag_val/hellaswag_val.jsonl.gz")}
    official = official_requests(tmp_path, "hellaswag", validation, training_split=None)  # no train file here
    assert official[0][1] == "Roof shingle removal: A man is sitting on a roof. He"
    assert ours(tmp_path / "a", "hellaswag", tmp_path / "original") == official
    from lm_eval.tasks.hellaswag.utils import preprocess

    export = [
        {"activity_label": r["activity_label"], "ctx": preprocess(r["ctx"])} | {"endings": endings, "label": r["label"]}
        for r in original
    ]
    write_jsonl(tmp_path / "export/hellaswag_val/hellaswag_val.jsonl.gz", export)
    assert ours(tmp_path / "b", "hellaswag", tmp_path / "export") == official
    assert [(d["ctx_a"], d["ctx_b"]) for d in read_hellaswag(tmp_path / "export/hellaswag_val/hellaswag_val.jsonl.gz")][
        :3
    ] == [r[1:] for r in HELLASWAG_ROWS[:3]]


def test_eval_flags_are_per_task_generation_lengths():
    args = eval_parser().parse_args(["--model", "m", "--tasks", "gsm8k", "--gsm8k_max_new_tokens", "300"])
    assert (args.gsm8k_max_new_tokens, args.humaneval_max_new_tokens) == (300, 1024)
    assert HUMANEVAL_MAX_NEW_TOKENS == official_config("humaneval")["generation_kwargs"]["max_gen_toks"] == 1024
    with pytest.raises(argparse.ArgumentError, match="unrecognized arguments: --max_new_tokens 8"):
        eval_parser().parse_args(["--model", "m", "--tasks", "gsm8k", "--max_new_tokens", "8"])


class LengthProbe(Constant):
    def generate_until(self, requests):
        self.lengths = [r.args[1].get("max_gen_toks") for r in requests]
        return super().generate_until(requests)


def test_humaneval_defaults_to_lm_evals_1024_new_tokens(bench):
    probe = LengthProbe()
    evaluate(probe, ["humaneval"], bench, allow_code_execution=True, limit=1)
    assert probe.lengths == [1024]


# ------------------------------------------------------------------------------------- the real model path


def test_tiny_model_end_to_end_with_output_and_baseline(tiny_model, bench, tmp_path, capsys):
    baseline = tmp_path / "old.json"
    baseline.write_text(json.dumps({"results": {"hellaswag": {"acc": 0.5}, "mmlu": {"acc": 0.0}}}))
    out = tmp_path / "res" / "results.json"
    flags = "--limit 2 --gsm8k_max_new_tokens 8 --humaneval_max_new_tokens 8 --allow_code_execution --device cpu --batch_size 4"
    main(
        [
            *f"--model {tiny_model} --tasks {','.join(TASKS)} --data_dir {bench} {flags}".split(),
            "--output",
            str(out),
            "--baseline",
            str(baseline),
        ]
    )
    report = json.loads(out.read_text())
    values = [v for metrics in report["results"].values() for v in metrics.values()]
    assert len(values) >= 10 and all(0.0 <= v <= 1.0 for v in values)
    assert set(report["results"]) == {"mmlu", "mmlu_toy_animals", "mmlu_toy_math", *TASKS[1:]}
    assert report["samples"]["mmlu_toy_math"] == 2 and report["samples"]["humaneval"] == 2
    assert report["config"]["model"] == str(tiny_model)
    assert [p.name for p in out.parent.iterdir()] == ["results.json"]  # no temp file left beside it
    printed = capsys.readouterr().out
    assert "Δ vs baseline" in printed and "results:" in printed
    hellaswag_acc = report["results"]["hellaswag"]["acc"]
    assert f"{hellaswag_acc - 0.5:+.4f}" in printed


def test_load_causal_lm_merges_a_lora_checkpoint_from_fit(cli, fit_args, tmp_path):
    from lightning_ft.module import FineTuneModule

    assert cli(fit_args("--model.method", "LoRA", "--model.method.r", "4", run_dir=tmp_path / "run")) == 0
    checkpoint = tmp_path / "run/checkpoints/last.ckpt"
    adapter = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained: merging changes weights
    model, tokenizer = load_causal_lm(str(checkpoint))
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged into plain weights
    trained = FineTuneModule.load_from_checkpoint(checkpoint).model.eval()  # base + adapter, unmerged
    ids = tokenizer("red cat blue dog", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trained(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason="../shared/datasets is not here")
def test_real_benchmark_files_with_the_tiny_model(tiny_model, tmp_path):
    out = tmp_path / "real.json"
    tasks = "mmlu_abstract_algebra,hellaswag,gsm8k,humaneval,truthfulqa"
    flags = "--limit 20 --gsm8k_max_new_tokens 8 --humaneval_max_new_tokens 8 --num_fewshot 2 --allow_code_execution --device cpu --batch_size 16"
    main(
        [
            *f"--model {tiny_model} --tasks {tasks} {flags}".split(),
            "--data_dir",
            str(SHARED_DATASETS),
            "--output",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"mmlu_abstract_algebra", "hellaswag", "gsm8k", "humaneval", "truthfulqa"}
    assert all(n == 20 for n in report["samples"].values())
    assert all(0.0 <= v <= 1.0 for metrics in report["results"].values() for v in metrics.values())


# ------------------------------------------------------------------------------------------------- sandbox


def canonical_program(index: int, body: str | None = None) -> str:
    name, signature, canonical, test = HUMANEVAL[index]
    return f"{humaneval_prompt(signature)}{body or canonical}\n\ndef check(candidate):\n{test}\n\ncheck({name})\n"


def test_sandbox_passes_the_canonical_solution_and_fails_a_wrong_one():
    right, wrong = sandbox.run_programs([canonical_program(1), canonical_program(1, "    return a - b\n")])
    assert right.status == "passed"
    assert wrong.status == "failed" and "AssertionError" in wrong.output
    assert sandbox.run_program("import sys\nsys.exit(0)\ncheck()").status == "failed"  # an early exit is no pass


def test_sandbox_kills_an_infinite_loop_within_its_timeout():
    started = time.monotonic()
    assert sandbox.run_program("import os\nos.fork()\nwhile True:\n    pass", timeout=1.0).status == "timeout"
    assert time.monotonic() - started < 5


def test_sandbox_work_dir_is_deleted_afterwards():
    outcome = sandbox.run_program("import os\nopen('scratch.txt', 'w').write('x')\nprint('cwd=' + os.getcwd())")
    assert outcome.status == "passed"
    work = Path(outcome.output.split("cwd=")[1].split()[0])
    assert work.name.startswith("lft-sandbox-") and not work.exists()


@pytest.mark.skipif(sandbox.isolation() != "namespaces", reason="needs root and a working `unshare`")
def test_sandbox_cannot_write_outside_its_dir_nor_reach_a_network():
    targets = [Path("/tmp") / f"lft-escape-{secrets.token_hex(4)}", ROOT / f"lft-escape-{secrets.token_hex(4)}"]
    program = "\n".join(f"open({str(t)!r}, 'w').write('escaped')" for t in targets)
    outcome = sandbox.run_program(program)
    assert outcome.status == "failed" and "Read-only file system" in outcome.output
    assert not any(t.exists() for t in targets)
    devices = sandbox.run_program("print(open('/proc/net/dev').read())").output.splitlines()[2:]
    assert [line.split(":")[0].strip() for line in devices] == ["lo"]


# -------------------------------------------------------------------------------------------------- errors


def test_unknown_task_lists_the_known_ones(bench):
    with pytest.raises(
        UserError, match=r"unknown task 'mmlu-pro' \(known: mmlu, hellaswag, gsm8k, gsm8k_cot, humaneval"
    ):
        evaluate(Constant(), ["mmlu-pro"], bench)
    with pytest.raises(UserError, match="unknown MMLU subject 'mmlu_astrology'"):
        evaluate(Constant(), ["mmlu_astrology"], bench)


def test_missing_data_file_says_which_and_where(bench, tmp_path):
    (tmp_path / "gsm8k").mkdir()
    with pytest.raises(UserError, match=rf"gsm8k: missing data file gsm8k/test.jsonl \(looked in {tmp_path}\)"):
        evaluate(Constant(), ["gsm8k"], tmp_path)
    with pytest.raises(UserError, match=f"benchmark data dir {tmp_path / 'nowhere'} does not exist"):
        main(["--model", "x", "--tasks", "hellaswag", "--data_dir", str(tmp_path / "nowhere")])


def test_malformed_file_names_file_and_line(tmp_path):
    header = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    write_csv(
        tmp_path / "mmlu/test/toy_test.csv",
        [header, ["Q1?", "a", "b", "c", "d", "0"], ["Q2?", "a", "b", "c", "d", "7"]],
    )
    with pytest.raises(UserError, match=r"malformed benchmark file .*toy_test.csv, line 3: answer must be 0-3") as err:
        evaluate(Constant(), ["mmlu_toy"], tmp_path, num_fewshot=0)
    assert "\n" not in str(err.value)  # the CLI prints it as one `error: ...` line
    write_jsonl(tmp_path / "gsm8k/test.jsonl", [{"question": "q", "answer": "#### 1"}])
    (tmp_path / "gsm8k/test.jsonl").open("a").write("{not json\n")
    with pytest.raises(UserError, match=r"gsm8k/test.jsonl:2: invalid JSON \(Expecting property name"):
        evaluate(Constant(), ["gsm8k"], tmp_path, num_fewshot=0)


def test_humaneval_needs_allow_code_execution(bench):
    with pytest.raises(UserError, match="add --allow_code_execution"):
        evaluate(Oracle(), ["humaneval"], bench)


def test_model_must_be_a_model_dir_or_a_checkpoint(bench, tmp_path):
    with pytest.raises(UserError, match="is neither a model directory .* nor a .ckpt file"):
        main(["--model", str(tmp_path), "--tasks", "hellaswag", "--data_dir", str(bench)])
