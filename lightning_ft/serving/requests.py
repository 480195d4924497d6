"""Reading an OpenAI-style request field by field: a field that is wrong is an ApiError naming it (a 4xx in
OpenAI's error shape), before anything reaches a model."""

from __future__ import annotations

import json
import math

from fastapi import Request
from fastapi.responses import JSONResponse

MAX_STOP_STRINGS = 4  # as OpenAI's API


class ApiError(Exception):
    """A request the server refuses, with what OpenAI's API would answer."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


async def json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not JSON ({err})") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def optional_text(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"'{name}' must be text", name)
    return value


def read_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    turns = []
    for number, message in enumerate(messages):
        param = f"messages[{number}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"{param} must be an object with a 'role'", param)
        content = message.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text parts are served, others are not
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise ApiError(400, f"{param}.content: only text parts are served", f"{param}.content")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{param}.content must be text", f"{param}.content")
        if message["role"] not in ("system", "user", "assistant", "tool"):
            raise ApiError(
                400, f"{param}.role '{message['role']}' is not system, user, assistant or tool", f"{param}.role"
            )
        turns.append({"role": message["role"], "content": content})
    if turns[-1]["role"] not in ("user", "tool"):
        raise ApiError(400, "the last message must be the user's (or a tool result): the model answers it", "messages")
    return turns


def read_input(body: dict) -> str | list[str]:
    """A classification request's `input`: one text, or a pair of texts."""
    if body.get("stream"):
        raise ApiError(400, "/v1/classify answers at once: 'stream' is not for it", "stream")
    value = body.get("input")
    pair = isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
    if isinstance(value, str) or pair:
        return value
    raise ApiError(400, "'input' must be a text, or a pair of texts [first, second]", "input")


def read_prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be text (one prompt per request)", "prompt")
    return prompt


def number(body: dict, name: str, default, low, high, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {kind} from {low} to {high}, got {value!r}", name)
    return value


def read_sampling(body: dict, endpoint: str) -> dict:
    n = number(body, "n", 1, 1, 1, integer=True)  # one choice per request: ask again for more
    del n
    default_tokens = 16 if endpoint == "completions" else 256  # OpenAI's completions default is 16
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = number({"max_tokens": tokens}, "max_tokens", default_tokens, 1, 2**31, integer=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(
            400, f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings", "stop"
        )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer, got {seed!r}", "seed")
    if body.get("logprobs") or body.get("echo") or body.get("tools"):
        name = next(key for key in ("logprobs", "echo", "tools") if body.get(key))
        raise ApiError(400, f"'{name}' is not supported by this server", name)
    return {
        "max_tokens": max_tokens,
        "temperature": number(body, "temperature", 1.0, 0, 2),
        "top_p": number(body, "top_p", 1.0, 1e-9, 1),
        "seed": seed,
        "stop": tuple(stop),
    }


def read_rating(value) -> int | bool:
    """A thumbs rating (true/false, "up"/"down") or a 1-5 score."""
    if isinstance(value, bool):
        return value
    if value in ("up", "down"):
        return value == "up"
    if isinstance(value, int) and 1 <= value <= 5:
        return value
    raise ApiError(400, f"'rating' must be true/false, 'up'/'down' or an integer 1-5, got {value!r}", "rating")
