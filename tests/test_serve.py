"""`lightning-ft serve`: a tiny fine-tune served over HTTP on 127.0.0.1 and asked through the official openai client."""

from __future__ import annotations

import asyncio
import csv
import http.client
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
from conftest import SHARED_DATASETS, instruction_rows, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_ft.callbacks.generation import generate
from lightning_ft.commands import main
from lightning_ft.data.formats import Chat, EncodeContext, Instruction
from lightning_ft.data.quality import QualityRules
from lightning_ft.data.served import TrainedPrompts, prompt_settings
from lightning_ft.serving.metrics import LATENCY_BUCKETS
from lightning_ft.serving.versions import read_version

QUESTION = "Reverse the words."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chat_rows(n: int, seed: int) -> list[dict]:
    """The instruction task as conversations."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"{r['instruction']} {r['input']}"},
                {"role": "assistant", "content": r["output"]},
            ]
        }
        for r in instruction_rows(n, seed)
    ]


def short_fit(tiny_model, run: Path, train: Path, val: Path, *extra: str) -> str:
    fit = ["fit", "--model.model_name_or_path", str(tiny_model), "--model.method", "LoRA", *extra]
    fit += ["--data.train_path", str(train), "--data.val_path", str(val), "--trainer.default_root_dir", str(run)]
    fit += ["--trainer.max_steps", "4", "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    fit += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--generation.num_samples", "0"]
    assert main([*fit, "--model.optim.lr", "1e-2"]) == 0
    return str(run / "checkpoints/last.ckpt")


@pytest.fixture(scope="module")
def exports(tiny_model, data_dir, tmp_path_factory) -> Path:
    """Short LoRA fits of the tiny model: on instructions, exported merged (v1) and as an adapter (v2); on the same
    task as conversations, exported merged (v3) and as an adapter (v4) of the same base as v2's."""
    root = tmp_path_factory.mktemp("serve")
    checkpoint = short_fit(tiny_model, root / "run", data_dir / "train.jsonl", data_dir / "val.jsonl")
    assert main(["export", "--ckpt", checkpoint, "--output", str(root / "v1"), "--merge", "--version", "v1"]) == 0
    assert main(["export", "--ckpt", checkpoint, "--output", str(root / "v2"), "--version", "v2"]) == 0
    chats = write_jsonl(root / "chat.jsonl", chat_rows(400, 0)), write_jsonl(root / "chat_val.jsonl", chat_rows(8, 1))
    checkpoint = short_fit(tiny_model, root / "chat_run", *chats, "--data.format", "chat")
    assert main(["export", "--ckpt", checkpoint, "--output", str(root / "v3"), "--merge"]) == 0
    assert main(["export", "--ckpt", checkpoint, "--output", str(root / "v4")]) == 0
    return root


class Server:
    def __init__(self, args: list[str], log_dir: Path) -> None:
        self.port, self.log_dir = free_port(), log_dir
        command = [sys.executable, "-m", "lightning_ft", "serve", *args, "--port", str(self.port)]
        command += ["--log_dir", str(log_dir), "--max_batch_size", "8"]
        self.output = open(log_dir.parent / f"{log_dir.name}.out", "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not start: {self.log()}")

    def log(self) -> str:
        self.output.flush()
        return (self.log_dir.parent / f"{self.log_dir.name}.out").read_text()[-3000:]

    def post(self, path: str, body) -> tuple[int, dict, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, dict(answer.headers), json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), json.loads(err.read())

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as answer:
            return answer.read().decode()

    def stop(self) -> int:
        """SIGTERM to the server this test started, by its pid; then nothing of it may be left (its session's
        processes: the HTTP and inference workers LitServe started)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.output.close()
            assert not left_of(self.process.pid), f"the server left {left_of(self.process.pid)} running"


def left_of(session: int, wait: float = 10.0) -> list[int]:
    """The processes still running in a session, after up to `wait` seconds for them to end."""
    deadline = time.monotonic() + wait
    while True:
        left = [p.pid for p in psutil.process_iter(["pid"]) if p.pid != os.getpid() and session_of(p.pid) == session]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def server(exports):
    served = Server(
        ["--model", "v1", "--model", str(exports / "v2"), "--model", f"v3={exports / 'v3'}", "--route", "v1=0.8,v2=0.2"]
        + ["--model", f"v4={exports / 'v4'}", "--model", f"ckpt={exports / 'run/checkpoints/last.ckpt'}"]
        + ["--registry", str(exports / "models.json"), "--drift_window", "50"],
        exports / "logs",
    )
    yield served
    assert served.stop() == 0, served.log()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_gets_the_answer_generate_gives(exports, client):
    """Greedy (temperature 0): the served answer equals `generate` on the same model and the training's template."""
    model = AutoModelForCausalLM.from_pretrained(exports / "v1")
    tokenizer = AutoTokenizer.from_pretrained(exports / "v1")
    prompt = Instruction().generation_example({"instruction": QUESTION, "input": "", "output": ""}, tokenizer)
    expected = generate(model, tokenizer, [prompt["prompt_ids"]], 8)[0]

    messages = [{"role": "user", "content": QUESTION}]
    chat = client.chat.completions.create(model="v1", messages=messages, max_tokens=8, temperature=0)
    assert chat.model == "v1" and chat.choices[0].message.content == expected
    assert chat.usage.prompt_tokens == len(prompt["prompt_ids"]) and chat.usage.completion_tokens <= 8
    assert chat.choices[0].finish_reason in ("stop", "length")

    streamed = client.chat.completions.create(model="v1", messages=messages, max_tokens=8, temperature=0, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason

    completion = client.completions.create(model="v1", prompt=QUESTION, max_tokens=8, temperature=0)
    assert completion.choices[0].text == expected
    streamed = client.completions.create(model="v1", prompt=QUESTION, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected

    # The adapter exports (v2, v4: two adapters over one base, switched per request) and the checkpoint answer as
    # the merged exports of the same trained models do.
    chat = {"role": "user", "content": f"{QUESTION} red cat blue"}
    merged, seen = {}, []
    for name in ("v1", "v3", "v2", "v4", "v2", "ckpt", "v4"):
        asked = {"model": name, "messages": [chat], "max_tokens": 8, "temperature": 0}
        answer = client.chat.completions.create(**asked)
        seen.append((name, answer.choices[0].message.content))
        assert answer.model == name
        merged.setdefault({"v2": "v1", "ckpt": "v1", "v4": "v3"}.get(name, name), set()).add(
            answer.choices[0].message.content
        )
    assert all(len(answers) == 1 for answers in merged.values()), seen
    models = client.models.list()
    assert {m.id for m in models.data} == {"v1", "v2", "v3", "v4", "ckpt"}


def test_sampling_honours_seed_temperature_and_stop(client):
    messages = [{"role": "user", "content": QUESTION}]
    asked = {"model": "v1", "messages": messages, "max_tokens": 12, "temperature": 1.5}
    first, again = (client.chat.completions.create(**asked, seed=7).choices[0].message.content for _ in range(2))
    others = {client.chat.completions.create(**asked, seed=s).choices[0].message.content for s in range(8)}
    assert first == again and len(others) > 1
    whole = client.completions.create(model="v1", prompt=QUESTION, max_tokens=12, temperature=0).choices[0]
    if len(whole.text) > 2:
        stop = whole.text[1:3]
        cut = client.completions.create(model="v1", prompt=QUESTION, max_tokens=12, temperature=0, stop=[stop])
        assert cut.choices[0].text == whole.text[: whole.text.index(stop)] and cut.choices[0].finish_reason == "stop"
    short = client.completions.create(model="v1", prompt=QUESTION, max_tokens=1, temperature=0).choices[0]
    assert short.finish_reason in ("length", "stop")


BAD_REQUESTS = [
    ("/v1/chat/completions", b"{not json", 400),
    ("/v1/chat/completions", b"[1, 2]", 400),
    ("/v1/chat/completions", {"model": "v9", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ("/v1/chat/completions", {"model": "v1"}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": []}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": "hi"}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"content": "hi"}]}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "user", "content": 3}]}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "assistant", "content": "hi"}]}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "user", "content": "hi"}], "seed": "x"}, 400),
    ("/v1/chat/completions", {"model": "v1", "messages": [{"role": "user", "content": "x " * 2000}]}, 400),
    ("/v1/completions", {"model": "v1", "prompt": ["a", "b"]}, 400),
    ("/v1/completions", {"model": "v1", "prompt": "hi", "max_tokens": -5}, 400),
    ("/v1/feedback", {"response_id": "chatcmpl-nope", "rating": 5}, 404),
    ("/v1/feedback", {"rating": 5}, 400),
    ("/admin/route", {"route": "v1=-1"}, 400),
    ("/admin/route", {"route": "v7=1"}, 400),
]


def test_bad_requests_are_4xx_with_a_clear_message_and_the_server_keeps_serving(server):
    for path, body, status in BAD_REQUESTS:
        got, _, answer = server.post(path, body)
        assert got == status, (path, body, got, answer)
        error = answer["error"]
        assert error["message"] and error["type"] == "invalid_request_error", answer
        good = {"model": "v1", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2}
        assert server.post("/v1/chat/completions", good)[0] == 200, (path, body)


def latency_buckets(server, endpoint: str) -> dict[float, float]:
    """The cumulative latency histogram of an endpoint in /metrics (all versions): {bucket bound: requests}."""
    counts: dict[float, float] = {}
    for line in server.get("/metrics").splitlines():
        if line.startswith("lightning_ft_request_latency_seconds_bucket{") and f'endpoint="{endpoint}"' in line:
            bound = line.split('le="')[1].split('"')[0]
            bound = math.inf if bound == "+Inf" else float(bound)
            counts[bound] = counts.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def histogram_quantile(counts: dict[float, float], q: float) -> float:
    """The bucket bound a quantile falls under, as Prometheus' histogram_quantile bounds it."""
    return next(bound for bound, count in sorted(counts.items()) if count >= q * counts[math.inf])


def since(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """The histogram of the requests between two scrapes."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def test_a_routed_load_is_split_by_weight_sticky_per_user_counted_and_logged(server):
    """1,000 routed requests, 16 at a time, half from 50 named users and half anonymous: all answered, each user on
    one version, shares within binomial bounds, every request in the log and in /metrics, whose percentiles agree
    with the client's."""
    users = [f"user{i}" for i in range(50)]
    connections = threading.local()  # one kept-alive connection per client thread, as a real client pools them

    def ask(i: int) -> tuple:
        user = users[(i // 2) % 50] if i % 2 else None
        body = json.dumps({"model": "auto", "prompt": QUESTION, "max_tokens": 2, "user": user})
        if not hasattr(connections, "http"):
            connections.http = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        started = time.perf_counter()
        connections.http.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = connections.http.getresponse()
        answer = json.loads(response.read())
        took = time.perf_counter() - started
        return response.status, response.getheader("x-lightning-ft-version"), answer.get("model"), user, took

    log = server.log_dir / "requests.jsonl"
    before = len(log.read_text().splitlines()) if log.is_file() else 0
    histogram_before = latency_buckets(server, "completions")
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(1000)))
    assert all(status == 200 for status, *_ in results)
    assert all(header == model for _, header, model, *_ in results)
    versions_of = {}
    for _, _, model, user, _ in results:
        if user:
            versions_of.setdefault(user, set()).add(model)
    assert len(versions_of) == 50 and all(len(v) == 1 for v in versions_of.values()), versions_of

    def within(hits: int, n: int, p: float = 0.2) -> bool:  # binomial, +-3.3 sd: 99.9%
        return abs(hits - n * p) <= 3.3 * math.sqrt(n * p * (1 - p))

    anonymous = [model for _, _, model, user, _ in results if user is None]
    assert within(anonymous.count("v2"), len(anonymous)), anonymous.count("v2")
    assert within(sum(v == {"v2"} for v in versions_of.values()), 50)  # a user is one draw, whatever they ask

    logged = [json.loads(line) for line in log.read_text().splitlines()[before:]]
    assert len(logged) == 1000 and all(r["status"] == 200 and r["latency_s"] > 0 for r in logged)
    histogram = since(histogram_before, latency_buckets(server, "completions"))
    assert histogram[math.inf] == 1000
    latencies = sorted(r[-1] for r in results)
    bounds = [*LATENCY_BUCKETS, math.inf]
    for q in (0.5, 0.95, 0.99):
        # client and server time the same requests; the server's histogram bounds its quantile to a bucket
        client_side = latencies[min(len(latencies) - 1, int(q * len(latencies)))]
        served = histogram_quantile(histogram, q)
        client_bucket = next(i for i, bound in enumerate(bounds) if client_side <= bound)
        assert abs(bounds.index(served) - client_bucket) <= 1, (q, served, client_side)


def test_the_server_times_a_request_from_its_first_byte_to_its_last(server):
    """A client that sends its body slowly waits for it; so does the server's clock (it used to start in the handler,
    after the body was read: a client's 0.8 s was 0.06 s in /metrics and the log)."""
    body = json.dumps({"model": "v1", "prompt": QUESTION, "max_tokens": 2}).encode()
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    before = latency_buckets(server, "completions")
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
        started = time.perf_counter()
        connection.sendall(head.encode())
        time.sleep(0.8)
        connection.sendall(body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        took = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    response_id = json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"]
    logged = [json.loads(line) for line in (server.log_dir / "requests.jsonl").read_text().splitlines()]
    assert 0.8 <= next(r["latency_s"] for r in logged if r["id"] == response_id) <= took
    histogram = since(before, latency_buckets(server, "completions"))
    client_bucket = next(bound for bound in sorted(histogram) if bound >= took)
    assert histogram[math.inf] == 1 and histogram[0.75] == 0 and histogram[client_bucket] == 1  # the client's bucket


def test_writing_the_log_holds_up_no_other_request(exports, tmp_path):
    """A request whose log line is slow to write (a busy disk) waits for it; meanwhile the server answers others
    (logging used to run on the event loop and stopped every request for its length)."""
    import httpx

    version = read_version("v1", exports / "v1")
    client, _ = in_process([version], tmp_path)
    spec, log_request = client.app.spec, client.app.spec.log.request

    def slow_disk(entry):
        time.sleep(1.0)
        log_request(entry)

    spec.log.request = slow_disk

    async def both() -> tuple[float, float]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            started = time.perf_counter()
            body = {"model": "v1", "prompt": QUESTION, "max_tokens": 2}
            slow = asyncio.create_task(http.post("/v1/completions", json=body))
            await asyncio.sleep(0.2)  # the slow one is writing its line by now
            assert (await http.get("/v1/models")).status_code == 200
            other = time.perf_counter() - started
            assert (await slow).status_code == 200
            return other, time.perf_counter() - started

    other, slow = asyncio.run(both())
    assert slow >= 1.0 and other < 0.8, (other, slow)
    assert len((tmp_path / "logs/requests.jsonl").read_text().splitlines()) == 1  # written before it was answered


def test_the_route_changes_while_serving(server):
    status, _, answer = server.post("/admin/route", {"route": "v2=1"})
    assert status == 200 and answer["route"] == {"v2": 1.0}
    body = {"model": "auto", "prompt": QUESTION, "max_tokens": 1, "user": "someone"}
    assert server.post("/v1/completions", body)[2]["model"] == "v2"
    assert server.post("/admin/route", {"route": "v1=0.8,v2=0.2"})[0] == 200


def test_feedback_is_recorded_against_a_response_and_logs_are_redacted(server):
    prompt = f"{QUESTION} Mail ann.lee@example.com"
    status, _, answer = server.post("/v1/completions", {"model": "v1", "prompt": prompt, "max_tokens": 2})
    assert status == 200
    logged = json.loads((server.log_dir / "requests.jsonl").read_text().splitlines()[-1])
    assert logged["id"] == answer["id"] and logged["input"] == f"{QUESTION} Mail <EMAIL>"
    assert server.post("/v1/feedback", {"response_id": answer["id"], "rating": 5, "user": "ann"})[0] == 200
    assert server.post("/v1/feedback", {"response_id": answer["id"], "rating": 9})[0] == 400
    ratings = [json.loads(line) for line in (server.log_dir / "feedback.jsonl").read_text().splitlines()]
    assert ratings[-1]["response_id"] == answer["id"] and ratings[-1]["rating"] == 5


def test_releases_are_registered_and_listed(exports, capsys):
    assert main(["models", str(exports)]) == 0
    shown = capsys.readouterr().out
    assert all(word in shown for word in ("v1", "v2", "merged", "adapter", "LoRA"))
    entries = {e["version"]: e for e in json.loads((exports / "models.json").read_text())["versions"]}
    assert set(entries) == {"v1", "v2"} and entries["v1"]["path"] == str(exports / "v1")
    assert entries["v1"]["data"]["fingerprint"] and "val_loss" in entries["v1"]["metrics"]
    assert entries["v1"]["check"]["max_abs_diff"] < 1e-3 and entries["v1"]["created"]
    # a tag names one release: giving it to another folder is refused before anything is written
    checkpoint = str(exports / "run/checkpoints/last.ckpt")
    assert main(["export", "--ckpt", checkpoint, "--output", str(exports / "again"), "--version", "v1"]) == 2
    assert "version v1 is already" in capsys.readouterr().err and not (exports / "again").exists()


@pytest.mark.parametrize("fmt", [Instruction(), Chat()], ids=["instruction", "chat"])
def test_the_served_prompt_is_the_training_prompt(tiny_model, fmt):
    """The tokens a served request gets equal those training gave the same conversation before its answer."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts = TrainedPrompts(json.loads(json.dumps(prompt_settings(fmt, QualityRules()))))  # as a checkpoint keeps it
    question, answer = "Reverse the words:  red cat blue ", "blue cat red"
    if isinstance(fmt, Chat):
        record = {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question.strip()}]
        }
        record["messages"].append({"role": "assistant", "content": answer})
        request = record["messages"][:-1]
    else:
        record, request = {"instruction": question.strip(), "output": answer}, question  # served text: not stripped
    trained = fmt.encode(record, EncodeContext(tokenizer, max_length=512))
    start = next(i for i, label in enumerate(trained["labels"]) if label != -100)
    assert prompts.ids(request, tokenizer) == trained["input_ids"][:start]
    if isinstance(fmt, Chat):
        assert tokenizer.eos_token_id in prompts.turn_end_ids(tokenizer) | {tokenizer.eos_token_id}


def test_a_checkpoint_records_how_its_prompts_were_rendered(exports):
    saved = torch.load(exports / "run/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    assert saved["FineTuneDataModule"]["prompts"]["format"]["class_path"].endswith("Instruction")
    record = json.loads((exports / "v1/lightning_ft_export.json").read_text())
    assert record["prompts"] == saved["FineTuneDataModule"]["prompts"]


def paragraphs(n: int, seed: int = 0) -> list[str]:
    """Questions unlike the training's: long, other words, digits and punctuation (an exam, not a word game)."""
    rng = random.Random(seed)
    words = [
        "thermodynamics",
        "entropy",
        "of",
        "an",
        "ideal",
        "gas",
        "at",
        "300",
        "kelvin;",
        "which",
        "statement",
        "(A,",
        "B,",
        "C",
        "or",
        "D)",
        "holds",
        "true?",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(40, 80))) for _ in range(n)]


MMLU = SHARED_DATASETS / "mmlu" / "test"


def mmlu_questions(n: int) -> list[str]:
    rows = []
    for path in sorted(MMLU.glob("*_test.csv"))[:10]:
        rows += [
            row[0] + "\n" + "\n".join(f"{c}. {a}" for c, a in zip("ABCD", row[1:5])) for row in csv.reader(path.open())
        ]
    return random.Random(0).sample([row for row in rows if len(row) < 300], n)  # within the tiny model's context


@pytest.mark.parametrize(
    "elsewhere",
    [paragraphs, pytest.param(mmlu_questions, marks=pytest.mark.skipif(not MMLU.is_dir(), reason="no MMLU here"))],
    ids=["exam-like", "mmlu"],
)
def test_drift_alerts_on_another_data_set_only(server, elsewhere):
    """A window of 50 prompts like the training's raises no alert; 60 from another data set do (v3, chat-trained)."""
    alerts = server.log_dir / "alerts.jsonl"

    def alerted() -> list[dict]:
        lines = alerts.read_text().splitlines() if alerts.is_file() else []
        return [a for a in map(json.loads, lines) if a["version"] == "v3"]

    def ask(contents: list[str]) -> None:
        for content in contents:
            body = {"model": "v3", "messages": [{"role": "user", "content": content}], "max_tokens": 1}
            assert server.post("/v1/chat/completions", body)[0] == 200

    already = len(alerted())
    ask([row["messages"][0]["content"] for row in chat_rows(60, seed=len(already * "x") + 7)])
    assert len(alerted()) == already, alerted()[already:]
    metrics = server.get("/metrics")
    scores = {line.split('statistic="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("lightning_ft_drift_score{") and 'version="v3"' in line}  # fmt: skip
    assert scores["token_psi"] < 0.25 and scores["length_psi"] < 0.25, scores
    ask(elsewhere(60))
    raised = alerted()[already:]
    assert {a["statistic"] for a in raised} & {"token_psi", "length_psi", "length_ks_p"}, raised
    assert all(a["scores"]["token_psi"] > scores["token_psi"] for a in raised)
    assert "drift alert: v3:" in server.log()
    ask([row["messages"][0]["content"] for row in chat_rows(60, seed=8)])  # back to normal for the next case


def test_rated_answers_become_preference_pairs_that_dpo_trains_on(server, exports, tmp_path, capsys):
    """Serve -> rate -> `data from-feedback` -> DPO on the served model: the loop back into training."""
    for row in chat_rows(6, seed=11):
        asked = {"model": "v3", "messages": row["messages"][:1], "max_tokens": 6, "temperature": 1.5}
        answers = [server.post("/v1/chat/completions", asked | {"seed": seed})[2]["id"] for seed in (1, 2)]
        for response_id, rating in zip(answers, (5, 1)):
            assert server.post("/v1/feedback", {"response_id": response_id, "rating": rating})[0] == 200
    pairs = tmp_path / "pairs.jsonl"
    command = ["data", "from-feedback", str(server.log_dir), "--format", "preference", "--output", str(pairs)]
    assert main(command) == 0
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert len(rows) >= 5 and all(isinstance(r["prompt"], list) and r["chosen"] != r["rejected"] for r in rows)
    run = tmp_path / "dpo"
    fit = ["fit", "--model.model_name_or_path", str(exports / "v3"), "--model.objective", "DPO"]
    fit += ["--model.method", "LoRA", "--data.format", "preference", "--data.train_path", str(pairs)]
    fit += ["--data.val_path", str(pairs), "--data.quality.leakage_check", "false"]  # few pairs: judged on themselves
    fit += ["--trainer.max_steps", "3", "--trainer.accelerator", "cpu"]
    fit += ["--trainer.default_root_dir", str(run), "--trainer.logger", "false", "--generation.num_samples", "0"]
    assert main([*fit, "--trainer.enable_progress_bar", "false", "--model.optim.lr", "1e-2"]) == 0
    final = json.loads((run / "run.json").read_text())["metrics"]["final"]
    assert final["val_rewards_margins"] > 0, final  # it learned from the ratings


def test_monitor_reads_what_the_server_logged(server, exports, tmp_path, capsys):
    """A server's logs, read by `lightning-ft monitor`: a row per version, plots, drift per version."""
    for name in ("v1", "v2", "v3"):
        asked = {"model": name, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2}
        assert server.post("/v1/chat/completions", asked)[0] == 200
    assert main(["monitor", "report", str(server.log_dir), "--output", str(tmp_path / "report")]) == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in ("v1", "v2", "v3")) and (tmp_path / "report/latency.png").is_file()
    assert main(["monitor", "drift", str(server.log_dir), "--model", str(exports / "v3")]) == 0
    assert "v3" in capsys.readouterr().out


def test_a_request_the_model_fails_on_is_a_500_for_it_alone(exports, tmp_path):
    """The HTTP side of a failure inside the model (the engine fails only the request that breaks it: see
    test_serving_engine): that request gets a 500 in OpenAI's error shape, is logged as one, and the next succeeds."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from litserve.utils import LitAPIStatus

    from lightning_ft.serving.requestlog import RequestLog
    from lightning_ft.serving.routing import Router
    from lightning_ft.serving.spec import OpenAICompatible
    from lightning_ft.serving.versions import read_version
    from lightning_ft.serving.watch import DriftWatch

    version = read_version("v1", exports / "v1")
    router = Router(tmp_path / "route.json", ["v1"], {"v1": 1.0})
    spec = OpenAICompatible([version], router, RequestLog(tmp_path / "logs"), {"v1": 512}, DriftWatch({}))

    async def worker(job):  # what api.py sends back: an error piece for the request that broke the model
        broken = job.input == "boom"
        piece = {"text": "", "token_id": None, "error": "RuntimeError: boom"} if broken else None
        piece = piece or {"text": "ok", "token_id": 5, "logprob": -0.5, "finish_reason": "stop", "error": None}
        yield json.dumps(piece), LitAPIStatus.OK

    spec.submit = worker
    spec.pre_setup(None)
    app = FastAPI()
    for path, endpoint, methods in spec.endpoints:
        app.add_api_route(path, endpoint, methods=methods)
    client = TestClient(app)
    failed = client.post("/v1/completions", json={"model": "v1", "prompt": "boom"})
    assert (
        failed.status_code == 500
        and "the model failed on this request: RuntimeError: boom" in failed.json()["error"]["message"]
    )
    good = client.post("/v1/completions", json={"model": "v1", "prompt": QUESTION})
    assert good.status_code == 200 and good.json()["choices"][0]["text"] == "ok"
    logged = [json.loads(line) for line in (tmp_path / "logs/requests.jsonl").read_text().splitlines()]
    assert [(r["status"], r["error"] is None) for r in logged] == [(500, False), (200, True)]


def in_process(versions: list, folder: Path):
    """A server's two halves in this process: the spec's endpoints on a test client, and its inference worker
    (serving/api.py) stepped as LitServe's loop steps it."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from litserve.utils import LitAPIStatus

    from lightning_ft.serving.api import Generation
    from lightning_ft.serving.requestlog import RequestLog
    from lightning_ft.serving.routing import Router
    from lightning_ft.serving.spec import OpenAICompatible
    from lightning_ft.serving.watch import DriftWatch

    names = [version.name for version in versions]
    router = Router(folder / "route.json", names, {names[0]: 1.0})
    drift = DriftWatch({version.name: version.profile for version in versions}, window=3, every=1)
    spec = OpenAICompatible(versions, router, RequestLog(folder / "logs"), dict.fromkeys(names, 512), drift)
    worker = Generation(spec, versions, max_batch_size=8, batch_timeout=0.0)
    worker.setup("cpu")

    async def submit(job):
        uid = f"request-{job.id}"
        worker.add_request(uid, {"version": job.version, "prompt_ids": job.prompt_ids, "sampling": job.sampling})
        while True:
            for output in worker.step(None):
                if output.status == LitAPIStatus.FINISH_STREAMING:
                    return
                yield worker.format_encoded_response(worker.encode_response(output.output)), output.status

    spec.submit = submit
    spec.pre_setup(None)
    app = FastAPI()
    for path, endpoint, methods in spec.endpoints:
        app.add_api_route(path, endpoint, methods=methods)
    app.spec = spec
    return TestClient(app), drift


def test_a_served_classifier_answers_the_label_probabilities_its_model_gives(tiny_model, data_dir, exports):
    from transformers import AutoModelForSequenceClassification

    from lightning_ft.serving.versions import read_version

    classify = ["--model.task", "sequence_classification", "--data.format", "classification"]
    classify += ["--model.labels", json.dumps(["neg", "pos"])]
    files = data_dir / "cls_train.jsonl", data_dir / "cls_val.jsonl"
    checkpoint = short_fit(tiny_model, exports / "cls_run", *files, *classify)
    assert main(["export", "--ckpt", checkpoint, "--output", str(exports / "cls"), "--merge"]) == 0
    client, drift = in_process([read_version("c1", exports / "cls")], exports / "cls_served")
    model = AutoModelForSequenceClassification.from_pretrained(exports / "cls").eval()
    tokenizer = AutoTokenizer.from_pretrained(exports / "cls")
    for text in ["good great nice cat", "bad awful poor dog", " good  great nice red "]:
        answer = client.post("/v1/classify", json={"model": "c1", "input": text}).json()
        with torch.no_grad():  # as training read it: whitespace normalised, then tokenized
            expected = model(**tokenizer(text.strip(), return_tensors="pt")).logits.softmax(-1)[0]
        assert answer["scores"] == pytest.approx(dict(zip(["neg", "pos"], expected.tolist())), abs=1e-5)
        assert answer["model"] == "c1" and answer["label"] == ["neg", "pos"][int(expected.argmax())]
    assert client.post("/v1/classify", json={"model": "c1", "input": ["a", "b"]}).status_code == 400  # single texts
    chat = {"model": "c1", "messages": [{"role": "user", "content": "x"}]}
    assert client.post("/v1/chat/completions", json=chat).status_code == 400
    logged = [json.loads(line) for line in (exports / "cls_served/logs/requests.jsonl").read_text().splitlines()]
    assert [r["endpoint"] for r in logged] == ["classify"] * 3 and set(logged[0]["output"]) == {"neg", "pos"}
    # the export's profile holds the training labels' shares, and the answers' labels are watched against them
    shares = drift.monitors["c1"].profile["label_shares"]
    assert set(shares) == {"neg", "pos"} and sum(shares.values()) == pytest.approx(1) and min(shares.values()) > 0.3
    assert "label_psi" in drift.monitors["c1"].scores()


def test_sigterm_finishes_the_requests_in_flight_then_stops(server):
    """The last test of the shared server: it stops it."""
    body = {"model": "v1", "prompt": QUESTION, "max_tokens": 400, "temperature": 1.0, "seed": 1}
    log = server.log_dir / "requests.jsonl"
    before = len(log.read_text().splitlines())
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(server.post, "/v1/completions", body) for _ in range(4)]
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        results = [a.result() for a in answers]
    assert [status for status, *_ in results] == [200] * 4, results
    assert server.process.wait(timeout=60) == 0, server.log()
    assert not left_of(server.process.pid), "the server left its workers running"
    assert "stopped: the requests in flight were answered" in server.log()
    logged = [json.loads(line) for line in log.read_text().splitlines()[before:]]
    assert len(logged) == 4  # every answered request is in the log
    assert any(r["latency_s"] > 0.3 for r in logged)  # some were still decoding when the signal came


def test_requests_take_free_slots_in_the_order_they_came():
    """LitServe's own prefill lets a new arrival overtake the requests waiting for a slot (serving/api.py's Loop)."""
    import asyncio
    from queue import Queue

    from lightning_ft.serving.api import Loop

    class Slots:  # the worker's side of admission: two slots, freed by the test
        def __init__(self):
            self.admitted, self.busy = [], 0

        def has_capacity(self):
            return self.busy < 2

        def add_request(self, uid, request):
            self.admitted.append(uid)
            self.busy += 1

    class Transport:
        def send(self, *args, **kwargs):
            pass

    loop, slots, queue = Loop(), Slots(), Queue()
    loop.put_response = lambda *args, **kwargs: None
    for uid in "abc":
        queue.put((0, uid, time.monotonic(), {}))

    async def prefill(pending):
        return await loop.prefill(pending, slots, None, queue, Transport())

    pending = []
    for _ in range(4):  # a and b take the two slots, c waits
        pending = asyncio.run(prefill(pending))
    assert slots.admitted == ["a", "b"] and [uid for _, uid, _ in pending] == ["c"]
    started = time.perf_counter()
    pending = asyncio.run(prefill(pending))  # full, nothing queued: returns at once (LitServe's waits a second)
    assert time.perf_counter() - started < 0.5
    slots.busy -= 1  # a finishes while d arrives: c takes the slot, d waits
    queue.put((0, "d", time.monotonic(), {}))
    pending = asyncio.run(prefill(pending))
    assert slots.admitted == ["a", "b", "c"]
    pending = asyncio.run(prefill(pending))
    slots.busy -= 1
    asyncio.run(prefill(pending))
    assert slots.admitted == ["a", "b", "c", "d"]
