"""Serving throughput and latency: `lightning-ft serve` at several concurrencies against transformers' `generate`
in a loop, on one model, the same prompts and the same number of new tokens.

    python scripts/bench_serve.py [--requests 64] [--max_tokens 64] [--concurrency 1 8 32] [--repeats 2]
                                  [--engine_batches 1 8] [--max_batch_size 8] [--threads 1] [--json results.json]

Builds the workload once, in a temp folder it removes at the end: a randomly initialised Llama (scripts/tiny_model.py)
with a byte-level BPE tokenizer trained on alpaca_gpt4_en_demo (../shared/datasets, read in place), fine-tuned
briefly with `lightning-ft fit` (LoRA, instruction format) and exported merged with `lightning-ft export --merge`;
the prompts are instructions of records the fit did not see. Then, in one run, the order rotating from repeat to
repeat:

- served: one `lightning-ft serve` process (started once, on a free 127.0.0.1 port), asked through /v1/completions
  by `concurrency` client threads (urllib; each sends its next request when its answer came: a closed loop), greedy
  (temperature 0), max_tokens fixed; tokens are the answers' `usage.completion_tokens`, over the wall time from the
  first request sent to the last answer received; latency is each request's wall time at the client;
- generate: a process of its own that renders each prompt as the server does (the export's recorded template), and
  calls `model.generate` one request at a time (greedy, the same stop tokens as the server, max_new_tokens the same),
  the loop a user would write; tokens counted as the server counts them (a stop token included);
- engine, batch N: the server's own Engine (lightning_ft/serving/engine.py) in a process of its own, no HTTP, N
  requests added at once and stepped to their end: what the server's decoding costs without the server around it.

Every served and engine answer is compared with generate's for the same prompt (equal work: the same number of
tokens, and greedy output the same text, up to float rounding in batches). All share the machine, so the cores each
keeps busy are reported: the server's processes and the client during the served runs, the contender's process and
the idle server during the others'. Every contender gets the same torch threads (--threads, OMP_NUM_THREADS).
Results: BENCHMARKS.md, "Serving".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_instruction_llama

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/datasets/alpaca_gpt4_en_demo/alpaca_en_demo.json"
VERSION = "bench"


def lightning_ft(*args: str, log: Path) -> None:
    """A lightning-ft command in a process of its own, as a user runs it; its output goes to log."""
    with log.open("w") as out:
        command = [sys.executable, "-m", "lightning_ft", *args]
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"lightning-ft {args[0]} failed (exit {done.returncode}):\n{log.read_text()[-3000:]}")


def prepare(args: argparse.Namespace, workdir: Path) -> dict:
    """The model (built, fine-tuned, exported merged) and the prompts, in workdir."""
    from lightning_ft.data.sources import read_records

    records = [record for _, record in read_records(str(args.data), "--data")]
    train, held_out = records[: args.train_records], records[args.train_records :]
    train_path = workdir / "train.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in train))
    sizes = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "vocab_size": args.vocab}
    base = build_instruction_llama(workdir / "base", train, **sizes)
    fit = ["fit", "--model.model_name_or_path", str(base), "--model.method", "LoRA", "--data.format", "instruction"]
    fit += ["--data.train_path", str(train_path), "--trainer.default_root_dir", str(workdir / "run")]
    fit += ["--trainer.max_steps", str(args.fit_steps), "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    fit += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--generation.num_samples", "0"]
    lightning_ft(*fit, log=workdir / "fit.log")
    export = workdir / "export"
    checkpoint = workdir / "run/checkpoints/last.ckpt"
    lightning_ft("export", "--ckpt", str(checkpoint), "--output", str(export), "--merge", log=workdir / "export.log")
    # distinct instructions the fit did not see, as many as requests (cycled if the file has fewer)
    prompts = list(dict.fromkeys(r["instruction"] for r in held_out if r.get("instruction") and not r.get("input")))
    prompts = [prompts[i % len(prompts)] for i in range(args.requests)]
    workload = {"export": str(export), "prompts": prompts, "max_tokens": args.max_tokens}
    (workdir / "workload.json").write_text(json.dumps(workload, indent=1))
    return workload


# -- in one process, no HTTP: transformers' generate (the baseline) and the server's own engine -------------------


def local_loop(workload_path: Path, contender: str, out: Path) -> None:
    """(In its own process.) Each prompt rendered as the server renders it (the export's recorded template), then
    either `model.generate` on it alone, or the server's Engine (engine.py) without the server around it: batches of
    `engine, batch N` requests added together and stepped to their end (what continuous batching does with requests
    that arrive together and run equally long)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lightning_ft.serving.engine import Engine, Sampling
    from lightning_ft.serving.versions import read_version, stop_token_ids

    workload = json.loads(workload_path.read_text())
    version = read_version(VERSION, workload["export"])
    tokenizer, max_tokens = version.tokenizer, workload["max_tokens"]
    model = AutoModelForCausalLM.from_pretrained(workload["export"]).eval()
    stops = sorted(stop_token_ids(version, model))
    batch = int(contender.rsplit(" ", 1)[1]) if contender.startswith("engine") else 1
    engine = Engine(model, tokenizer, max_batch_size=batch, stop_token_ids=stops)

    def generate(prompts: list[str]) -> list[dict]:
        ids = version.prompts.ids(prompts[0], tokenizer)
        started = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens, do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        new = output[0, len(ids) :].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True)
        return [{"latency_s": time.perf_counter() - started, "tokens": len(new), "text": text}]

    def engine_batch(prompts: list[str]) -> list[dict]:
        started = time.perf_counter()
        rows = {}
        for number, prompt in enumerate(prompts):
            rows[str(number)] = {"text": ""}
            engine.add(str(number), version.prompts.ids(prompt, tokenizer), Sampling(max_tokens, temperature=0))
        while engine.has_work():
            for token in engine.step():
                rows[token.uid]["text"] += token.text
                if token.finish_reason:
                    rows[token.uid] |= {"latency_s": time.perf_counter() - started, "tokens": token.completion_tokens}
        return list(rows.values())

    answer = generate if contender == "generate" else engine_batch
    prompts = workload["prompts"]
    answer(prompts[:batch])  # warm-up, as the server gets
    answer(prompts[:batch])
    process = psutil.Process()
    cpu = sum(process.cpu_times()[:2])
    started = time.perf_counter()
    rows = [row for start in range(0, len(prompts), batch) for row in answer(prompts[start : start + batch])]
    wall = time.perf_counter() - started
    cpu = sum(process.cpu_times()[:2]) - cpu
    out.write_text(json.dumps({"wall_s": wall, "cores": {"process": cpu / wall}, "rows": rows}))


def run_local(workdir: Path, contender: str, env: dict) -> dict:
    out = workdir / "local.json"
    command = [sys.executable, __file__, "--local", contender, "--workload", str(workdir / "workload.json")]
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{contender} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


# -- the server -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`lightning-ft serve` in a process this script starts, stops (SIGTERM, by pid) and waits for."""

    def __init__(self, export: str, workdir: Path, max_batch_size: int, env: dict) -> None:
        self.port, self.log_path = free_port(), workdir / "serve.log"
        command = [sys.executable, "-m", "lightning_ft", "serve", "--model", f"{VERSION}={export}"]
        command += ["--port", str(self.port), "--log_dir", str(workdir / "serve_logs")]
        command += ["--max_batch_size", str(max_batch_size)]
        self.output = self.log_path.open("w")
        self.process = subprocess.Popen(command, stdout=self.output, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited ({self.process.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"the server did not answer /health in 300 s:\n{self.log()}")

    def log(self) -> str:
        self.output.flush()
        return self.log_path.read_text()[-3000:]

    def processes(self) -> list[psutil.Process]:
        """The server's process and those it started (LitServe's HTTP and inference workers)."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def cpu_s(self) -> dict[str, float]:
        """User+system CPU seconds so far of each of the server's processes, by pid."""
        times = {}
        for process in self.processes():
            try:
                times[str(process.pid)] = sum(process.cpu_times()[:2])
            except psutil.NoSuchProcess:
                continue
        return times

    def complete(self, prompt: str, max_tokens: int) -> dict:
        body = {"model": VERSION, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        request = urllib.request.Request(
            f"{self.url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as err:
            return {"latency_s": time.perf_counter() - started, "error": f"{err.code} {err.read()[:300]!r}"}
        latency = time.perf_counter() - started
        usage = answer["usage"]
        text = answer["choices"][0]["text"]
        return {
            "latency_s": latency, "tokens": usage["completion_tokens"], "text": text,
            "prompt_tokens": usage["prompt_tokens"], "finish_reason": answer["choices"][0]["finish_reason"],
        }  # fmt: skip

    def stop(self) -> int | None:
        """SIGTERM to the process this script started, which stops LitServe's processes, its children, with it. Any
        still running 30 s after it exited (before f5af37c, SIGTERM left them all running) are ended by pid, and
        said so."""
        children = []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
        for child in alive:
            print(f"the server's process {child.pid} outlived it: ending it", flush=True)
            child.kill()
        self.output.close()
        return code


def run_served(server: Server, prompts: list[str], max_tokens: int, concurrency: int) -> dict:
    me = psutil.Process()
    client_cpu, server_cpu = sum(me.cpu_times()[:2]), server.cpu_s()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(pool.map(lambda prompt: server.complete(prompt, max_tokens), prompts))
    wall = time.perf_counter() - started
    after = server.cpu_s()
    cores = {
        "client": (sum(me.cpu_times()[:2]) - client_cpu) / wall,
        "server": sum(after[p] - server_cpu.get(p, 0) for p in after) / wall,
    }
    return {"wall_s": wall, "cores": cores, "rows": rows}


# -- the run --------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(runs: list[dict], reference: dict[str, dict]) -> list[dict]:
    """Per contender: median tokens/s over repeats, latency percentiles over all its requests, agreement with
    generate."""
    by_name: dict[str, list[dict]] = {}
    for run in runs:
        by_name.setdefault(run["contender"], []).append(run)
    rows = []
    for name, repeats in by_name.items():
        answers = [row for run in repeats for row in run["rows"]]
        failed = [row for row in answers if "error" in row]
        good = [row for row in answers if "error" not in row]
        rates = [sum(r.get("tokens", 0) for r in run["rows"]) / run["wall_s"] for run in repeats]
        latencies = [row["latency_s"] for row in good]
        same_tokens = sum(row["tokens"] == reference[row["prompt"]]["tokens"] for row in good)
        same_text = sum(row["text"] == reference[row["prompt"]]["text"] for row in good)
        cores = {who: statistics.median(run["cores"][who] for run in repeats) for who in repeats[0]["cores"]}
        rows.append({
            "contender": name, "requests": len(answers), "errors": len(failed),
            "completion_tokens": sum(row["tokens"] for row in good),
            "tokens_per_s": statistics.median(rates), "tokens_per_s_runs": rates,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p95_ms": 1000 * percentile(latencies, 0.95),
            "p99_ms": 1000 * percentile(latencies, 0.99), "max_ms": 1000 * max(latencies),
            "same_tokens": same_tokens / len(good), "same_text": same_text / len(good),
            "cores_busy": cores, "first_error": failed[0]["error"] if failed else None,
        })  # fmt: skip
    base = next(r["tokens_per_s"] for r in rows if r["contender"] == "generate")
    for row in rows:
        row["vs_generate"] = row["tokens_per_s"] / base
    return rows


def print_table(rows: list[dict], ratios: dict[str, float], per_repeat: dict[str, list[float]]) -> None:
    print("\n| contender | requests | completion tokens | tokens/s (runs) | p50 / p95 / p99 ms | vs generate "
          "| same tokens / text as generate | cores busy |")  # fmt: skip
    print("|---|---:|---:|---|---|---:|---|---|")
    for r in rows:
        runs = ", ".join(f"{x:,.0f}" for x in r["tokens_per_s_runs"])
        cores = ", ".join(f"{who} {busy:.2f}" for who, busy in r["cores_busy"].items())
        errors = f" ({r['errors']} failed)" if r["errors"] else ""
        print(f"| {r['contender']} | {r['requests']}{errors} | {r['completion_tokens']:,} "
              f"| {r['tokens_per_s']:,.0f} ({runs}) | {r['p50_ms']:,.0f} / {r['p95_ms']:,.0f} / {r['p99_ms']:,.0f} "
              f"| {r['vs_generate']:.2f}x | {r['same_tokens']:.0%} / {r['same_text']:.0%} | {cores} |")  # fmt: skip
    print()
    for name, ratio in ratios.items():
        repeats = ", ".join(f"{x:.2f}" for x in per_repeat[name])
        print(f"{name}: {ratio:.2f}x (of the medians; within each repeat: {repeats})")
    for r in rows:
        if r["first_error"]:
            print(f"{r['contender']}: first error: {r['first_error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--train_records", type=int, default=200, help="records the fit trains on")
    parser.add_argument("--fit_steps", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--requests", type=int, default=64, help="requests per contender and repeat")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max_batch_size", type=int, default=8, help="the server's (its default: 8)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engine_batches", type=int, nargs="*", default=[1, 8], help="the engine alone, no HTTP")
    # One torch thread for everybody: two competing with other processes on the 2 shared cores thrash (generate fell
    # to 5 tokens/s in one repeat with torch's default of 2). 0: torch's default.
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every contender alike")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--local", default=None, help=argparse.SUPPRESS)  # one local contender, in its own process
    parser.add_argument("--workload", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.local:
        local_loop(args.workload, args.local, args.out)
        return

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = None
    try:
        started = time.perf_counter()
        workload = prepare(args, workdir)
        print(
            f"workload ready in {time.perf_counter() - started:.0f} s: {len(workload['prompts'])} prompts", flush=True
        )
        server = Server(workload["export"], workdir, args.max_batch_size, env)
        for prompt in workload["prompts"][:8]:  # warm-up: the first forwards of a process are slow
            server.complete(prompt, args.max_tokens)
        contenders = ["generate", *(f"engine, batch {b}" for b in args.engine_batches)]
        contenders += [f"served, concurrency {c}" for c in args.concurrency]
        runs, load = [], [os.getloadavg()[0]]
        for repeat in range(args.repeats):
            shift = repeat % len(contenders)
            for name in contenders[shift:] + contenders[:shift]:
                if not name.startswith("served"):
                    before, idle = server.cpu_s(), time.perf_counter()
                    run = run_local(workdir, name, env)
                    after, idle = server.cpu_s(), time.perf_counter() - idle  # the whole process, loading included
                    run["cores"]["idle server"] = sum(after[p] - before.get(p, 0) for p in after) / idle
                else:
                    run = run_served(server, workload["prompts"], args.max_tokens, int(name.rsplit(" ", 1)[1]))
                for row, prompt in zip(run["rows"], workload["prompts"]):
                    row["prompt"] = prompt
                tokens = sum(row.get("tokens", 0) for row in run["rows"])
                print(f"repeat {repeat + 1}: {name}: {tokens / run['wall_s']:,.0f} tokens/s", flush=True)
                runs.append({**run, "contender": name, "repeat": repeat})
                load.append(os.getloadavg()[0])
        first_generate = next(run for run in runs if run["contender"] == "generate")
        reference = {row["prompt"]: row for row in first_generate["rows"]}
        rows = summarise(runs, reference)
        rate = {row["contender"]: row["tokens_per_s"] for row in rows}
        # the gain of batching requests, and what the HTTP server around the engine costs at equal batch
        pairs = [(f"served, concurrency {c}", "served, concurrency 1") for c in args.concurrency if c != 1]
        pairs += [(f"served, concurrency {b}", f"engine, batch {b}") for b in args.engine_batches]
        pairs = [(top, bottom) for top, bottom in pairs if top in rate and bottom in rate]
        ratios = {f"{top} / {bottom}": rate[top] / rate[bottom] for top, bottom in pairs}
        # the same within each repeat: the machine's speed changes from one repeat to the next
        by_repeat = {(run["contender"], run["repeat"]): sum(r.get("tokens", 0) for r in run["rows"]) / run["wall_s"]
                     for run in runs}  # fmt: skip
        per_repeat = {
            f"{top} / {bottom}": [by_repeat[top, r] / by_repeat[bottom, r] for r in range(args.repeats)]
            for top, bottom in pairs
        }
        print_table(rows, ratios, per_repeat)
        print(f"load average (1 min) during the run: {min(load):.2f}-{max(load):.2f}")
        if args.json:
            settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            summary = {"settings": settings, "rows": rows, "ratios": ratios, "ratios_per_repeat": per_repeat}
            summary["load_average"] = load
            args.json.write_text(json.dumps({**summary, "runs": runs}, indent=1))
    finally:
        if server is not None:
            code = server.stop()
            print(f"server stopped (exit {code})")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
