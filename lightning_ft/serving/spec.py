"""The OpenAI-compatible HTTP side of `lightning-ft serve`, as a LitServe spec.

It runs in the HTTP process and does everything but decoding: it validates a request (a bad one is a 4xx in
OpenAI's error shape and never reaches the model), picks the version (the request's `model`, or the route), renders
the prompt exactly as training rendered it, sends the prompt's token ids to the inference worker (api.py), and
streams, times, counts and logs the answer. LitServe's own OpenAISpec is not used: it has no /v1/completions, drops
`seed`, answers every request with the requested model name and finish_reason "stop", and batches per request, where
this server steps all requests together (continuous batching).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from lightning_ft.errors import UserError
from lightning_ft.serving import metrics
from lightning_ft.serving.requestlog import RequestLog
from lightning_ft.serving.requests import (
    ApiError,
    json_body,
    optional_text,
    read_input,
    read_messages,
    read_prompt,
    read_rating,
    read_sampling,
)
from lightning_ft.serving.routing import ROUTED_NAMES, Router, parse_route
from lightning_ft.serving.versions import Version
from lightning_ft.serving.watch import DriftWatch

VERSION_HEADER = "x-lightning-ft-version"


@dataclass
class Job:
    """One request on its way: what it asked, where it went, and what came back."""

    id: str
    endpoint: str
    version: str
    input: object
    prompt_ids: list[int]
    sampling: dict
    stream: bool
    user: str | None
    include_usage: bool = False
    started: float = field(default_factory=time.perf_counter)  # when the server first saw the request
    first_token: float | None = None
    last_token: float | None = None
    text: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    scores: dict[str, float] | None = None  # a classifier's answer

    def usage(self) -> dict:
        prompt, completion = len(self.prompt_ids), len(self.logprobs)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class OpenAICompatible(LitSpec):
    """/v1/chat/completions, /v1/completions, /v1/classify, /v1/models, /v1/feedback, /admin/route and /metrics."""

    def __init__(
        self, versions: list[Version], router: Router, log: RequestLog, context: dict[str, int], drift: DriftWatch
    ) -> None:
        super().__init__()
        self.api_path = "/v1/chat/completions"
        self.versions = {version.name: version for version in versions}
        self.router, self.log, self.context, self.drift = router, log, context, drift
        self.known_ids: set[str] | None = None  # response ids feedback may name (read from the log on first use)
        self._recorder: ThreadPoolExecutor | None = None

    @property
    def stream(self) -> bool:
        return True

    def pre_setup(self, lit_api) -> None:
        self.add_endpoint("/v1/chat/completions", self.chat_completions, ["POST"])
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/v1/classify", self.classify, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/v1/feedback", self.feedback, ["POST"])
        self.add_endpoint("/admin/route", self.route, ["GET", "POST"])
        self.add_endpoint("/metrics", self.metrics, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    # -- endpoints --------------------------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self.answer(request, "chat.completions")

    async def completions(self, request: Request) -> Response:
        return await self.answer(request, "completions")

    async def classify(self, request: Request) -> Response:
        return await self.answer(request, "classify")

    async def models(self) -> JSONResponse:
        data = [
            {"id": name, "object": "model", "owned_by": "lightning-ft", "kind": v.kind, "task": v.task}
            | {"source": str(v.source), "version": v.record.get("version")}
            for name, v in self.versions.items()
        ]
        return JSONResponse({"object": "list", "data": data, "route": self.router.weights})

    async def feedback(self, request: Request) -> Response:
        try:
            body = await json_body(request)
            response_id = body.get("response_id", body.get("id"))
            if not isinstance(response_id, str) or not response_id:
                raise ApiError(
                    400, "feedback needs 'response_id', the id of a response this server gave", "response_id"
                )
            if self.known_ids is None:
                self.known_ids = await self.recorded(self.log.served_ids)
            if response_id not in self.known_ids:
                raise ApiError(404, f"no response '{response_id}' was served here", "response_id")
            rating = read_rating(body.get("rating"))
            comment = body.get("comment")
            if comment is not None and not isinstance(comment, str):
                raise ApiError(400, "'comment' must be text", "comment")
            user = optional_text(body, "user")
        except ApiError as err:
            return err.response()
        entry = {"response_id": response_id, "rating": rating, "user": user, "comment": comment}
        await self.recorded(self.log.feedback, entry)
        return JSONResponse({"recorded": True, "response_id": response_id})

    async def route(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await json_body(request)
                text = body.get("route")
                if not isinstance(text, str):
                    raise ApiError(400, "POST /admin/route needs {'route': 'v1=0.9,v2=0.1'}", "route")
                try:
                    self.router.set(parse_route(text, list(self.versions), flag="route"))
                except UserError as err:
                    raise ApiError(400, str(err), "route") from None
            except ApiError as err:
                return err.response()
        self.router.reload()
        return JSONResponse({"route": self.router.weights})

    async def metrics(self) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    # -- answering --------------------------------------------------------------------------------------------------

    async def answer(self, request: Request, endpoint: str) -> Response:
        try:
            job = self.job(await json_body(request), endpoint, metrics.arrival(request.scope))
        except ApiError as err:
            metrics.REQUESTS.labels("none", endpoint, str(err.status)).inc()
            return err.response()
        request.scope.setdefault("state", {})[metrics.ANSWERED] = (job.version, job.endpoint)  # RequestTiming's
        pieces = self.submit(job)
        if job.stream:
            headers = {VERSION_HEADER: job.version}
            return StreamingResponse(self.sse(job, pieces), media_type="text/event-stream", headers=headers)
        try:
            async for _ in self.collect(job, pieces):
                pass
        except ApiError as err:
            await self.done(job, err.status, err.message)
            return err.response()
        await self.done(job, 200)
        return JSONResponse(self.whole(job), headers={VERSION_HEADER: job.version})

    def job(self, body: dict, endpoint: str, started: float) -> Job:
        """The request checked field by field, its version chosen and its prompt rendered."""
        user = optional_text(body, "user")
        name = body.get("model") or ""
        if not isinstance(name, str):
            raise ApiError(400, "'model' must be text", "model")
        if name in ROUTED_NAMES and name not in self.versions:
            name = self.router.choose(user)
        elif name not in self.versions:
            served = ", ".join(self.versions)
            raise ApiError(
                404,
                f"model '{name}' is not served here (models: {served}; or 'auto' to be routed)",
                "model",
                "model_not_found",
            )
        version = self.versions[name]
        if (endpoint == "classify") != (version.task == "sequence_classification"):
            use = "/v1/classify" if version.task == "sequence_classification" else "/v1/chat/completions"
            raise ApiError(400, f"model '{name}' is a {version.task} model: use {use}", "model")
        readers = {"chat.completions": read_messages, "completions": read_prompt, "classify": read_input}
        request = readers[endpoint](body)
        try:
            prompt_ids = (
                version.prompts.ids(request, version.tokenizer) if version.prompts else raw_ids(request, version)
            )
        except UserError as err:
            raise ApiError(400, str(err), "messages" if endpoint == "chat.completions" else "prompt") from None
        sampling = read_sampling(body, endpoint) if endpoint != "classify" else {"max_tokens": 0}
        context = self.context[name]
        if len(prompt_ids) + 1 > context:
            raise ApiError(
                400,
                f"the prompt is {len(prompt_ids)} tokens; model '{name}' reads at most {context}",
                None,
                "context_length_exceeded",
            )
        sampling["max_tokens"] = min(sampling["max_tokens"], context - len(prompt_ids))
        options = body.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        prefix = {"chat.completions": "chatcmpl", "completions": "cmpl", "classify": "clf"}[endpoint]
        uid = f"{prefix}-{uuid.uuid4().hex[:24]}"
        return Job(uid, endpoint, name, request, prompt_ids, sampling, bool(body.get("stream")), user, usage, started)

    def submit(self, job: Job):
        """Queue the job for the inference worker; the pieces it sends back, as (data, status)."""
        uid = uuid.uuid4()
        pieces, arrived = deque(), asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=pieces, event=arrived)
        payload = {"version": job.version, "prompt_ids": job.prompt_ids, "sampling": job.sampling}
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), payload))
        return self.data_streamer(pieces, arrived, send_status=True)

    async def collect(self, job: Job, pieces):
        """Each piece of text as it comes (timed); an ApiError when the worker failed this request."""
        async for data, status in pieces:
            if status == LitAPIStatus.ERROR:
                raise ApiError(500, f"the model failed on this request: {worker_error(data)}", code="model_error")
            if status != LitAPIStatus.OK or not data:
                continue
            piece = json.loads(data)
            if piece.get("error"):
                raise ApiError(500, f"the model failed on this request: {piece['error']}", code="model_error")
            job.scores = piece.get("scores") or job.scores
            now = time.perf_counter()
            if piece.get("token_id") is not None:
                if job.first_token is None:
                    job.first_token = now
                else:
                    metrics.PER_TOKEN.labels(job.version).observe(now - job.last_token)
                job.last_token = now
                job.logprobs.append(piece["logprob"])
            job.text.append(piece["text"])
            job.finish_reason = piece.get("finish_reason") or job.finish_reason
            yield piece["text"]

    async def sse(self, job: Job, pieces):
        """Server-sent events as OpenAI streams them: chunks, a last one with finish_reason, [DONE]."""
        try:
            first = job.endpoint == "chat.completions"
            async for text in self.collect(job, pieces):
                if text or first:
                    yield event(self.chunk(job, text, None, role=first))
                    first = False
            yield event(self.chunk(job, "", job.finish_reason or "stop"))
            if job.include_usage:
                yield event({**self.chunk(job, "", None), "choices": [], "usage": job.usage()})
            await self.done(job, 200)
        except ApiError as err:
            await self.done(job, err.status, err.message)
            yield event({"error": {"message": err.message, "type": "server_error", "param": None, "code": err.code}})
        yield "data: [DONE]\n\n"

    def chunk(self, job: Job, text: str, finish_reason: str | None, role: bool = False) -> dict:
        head = {"id": job.id, "created": int(time.time()), "model": job.version}
        if job.endpoint == "completions":
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            return head | {"object": "text_completion", "choices": [choice]}
        delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text or role else {})
        return head | {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def whole(self, job: Job) -> dict:
        head = {"id": job.id, "created": int(time.time()), "model": job.version, "usage": job.usage()}
        if job.endpoint == "classify":
            label = max(job.scores, key=job.scores.get)
            return head | {"object": "classification", "label": label, "scores": job.scores}
        text, reason = "".join(job.text), job.finish_reason or "stop"
        if job.endpoint == "completions":
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            return head | {"object": "text_completion", "choices": [choice]}
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reason,
            "logprobs": None,
        }
        return head | {"object": "chat.completion", "choices": [choice]}

    async def done(self, job: Job, status: int, error: str | None = None) -> None:
        """Count the finished request, then log it before its last byte is sent: in the recorder's thread, so that
        a slow disk or a drift score holds up this request alone, not the event loop every other one waits on."""
        metrics.REQUESTS.labels(job.version, job.endpoint, str(status)).inc()
        metrics.PROMPT_TOKENS.labels(job.version).inc(len(job.prompt_ids))
        metrics.OUTPUT_TOKENS.labels(job.version).inc(len(job.logprobs))
        ttft = None if job.first_token is None else job.first_token - job.started
        if ttft is not None:
            metrics.FIRST_TOKEN.labels(job.version).observe(ttft)
        if self.known_ids is not None:
            self.known_ids.add(job.id)
        latency = time.perf_counter() - job.started
        await self.recorded(self.record, job, status, error, latency, ttft)

    async def recorded(self, write, *args):
        """`write(*args)` in the recorder's one thread (log lines keep their order, drift windows see one request at
        a time), off the event loop."""
        if self._recorder is None:
            self._recorder = ThreadPoolExecutor(1, thread_name_prefix="lightning-ft-log")
        return await asyncio.get_running_loop().run_in_executor(self._recorder, write, *args)

    def __getstate__(self) -> dict:  # LitServe pickles the spec into its HTTP process; a thread pool does not travel
        return {**super().__getstate__(), "_recorder": None}

    def record(self, job: Job, status: int, error: str | None, latency: float, ttft: float | None) -> None:
        label = max(job.scores, key=job.scores.get) if job.scores else None  # a classifier's: label drift too
        self.drift.observe(job.version, job.prompt_ids, self.log, label)
        confidence = sum(job.logprobs) / len(job.logprobs) if job.logprobs else None
        if job.scores:  # a classifier's: the log-probability of the label it gave
            confidence = math.log(max(max(job.scores.values()), 1e-45))
        self.log.request(
            {
                "id": job.id, "endpoint": job.endpoint, "version": job.version, "user": job.user, "status": status,
                "error": error, "latency_s": latency, "ttft_s": ttft, "prompt_tokens": len(job.prompt_ids),
                "completion_tokens": len(job.logprobs), "confidence": confidence,
                "finish_reason": job.finish_reason if status == 200 else None, "stream": job.stream,
                "input": job.input, "output": (job.scores or "".join(job.text)) if status == 200 else None,
            }
        )  # fmt: skip


def raw_ids(request, version: Version) -> list[int]:
    if not isinstance(request, str):
        raise ApiError(
            400, f"model '{version.name}' records no chat format: send raw text to /v1/completions", "messages"
        )
    return version.tokenizer(request)["input_ids"]


def worker_error(data) -> str:
    text = str(getattr(data, "detail", None) or data)
    return text.splitlines()[0] if text else "unknown error"


def event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
