"""Continuous-batching token generation for `lightning-ft serve`: requests join and leave a running batch between steps.

Hand-written because HF `model.generate` runs one fixed batch to its end with one sampling setting for all of it; a
server needs rows that arrive at any time, each with its own temperature / top_p / seed / stop strings, and that leave
as soon as they finish so a queued request can take the slot. Each `step()` advances every active request by one token:

1. decode: the running rows feed their last sampled token through the model, on the KV cache of everything before it;
2. finished rows leave: their cache rows are dropped and the left padding all remaining rows share is trimmed;
3. admit: queued requests fill the free slots; their prompts are prefilled together and their first tokens sampled;
   their cache rows join the running ones (both sides left-padded to one length).

Rows of different lengths share one key and one value tensor per layer, [rows, kv_heads, columns, head_dim], padded on
the left: the attention mask hides the padding and explicit position_ids keep each row's positions 0..n-1, so what a
row generates does not depend on what it is batched with (up to float rounding). A batched forward that raises is
retried row by row, so a request that breaks the model fails alone.

Scope: transformers' DynamicCache with full-attention layers (Llama, Qwen, Mistral without a sliding window, ... and
peft adapters on them). Sliding-window and recurrent (linear-attention) layers, and peft prompt-learning methods that
bring their own cache (prefix tuning), are not handled.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

log = logging.getLogger(__name__)

# What tokenizers decode an incomplete UTF-8 sequence to: the rest of the character is in a later token.
REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 16  # new tokens at most
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus: the smallest set of tokens whose probability sums to >= top_p (HF's TopPLogitsWarper)
    seed: int | None = None  # per-request torch.Generator: same seed + same prompt => same tokens, whatever is batched
    stop: tuple[str, ...] = ()  # generation ends when the text contains one; it is cut from the output (OpenAI)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))  # a list from JSON is fine too
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")


@dataclass
class Token:
    """What one step produced for one request."""

    uid: str
    text: str  # newly decoded text since the last Token of this uid ("" while text is held back)
    token_id: int | None
    logprob: float | None  # log-prob of token_id under the model's own distribution (log_softmax of raw logits)
    finish_reason: (
        str | None
    )  # None while running; "stop" (stop token or string), "length" (max_tokens or context full), "error"
    error: str | None = None  # for finish_reason "error": one line saying what failed
    prompt_tokens: int = 0  # usage: the prompt's length
    completion_tokens: int = 0  # usage: tokens sampled so far, a stop token included (as OpenAI and vLLM count it)


@dataclass(eq=False)
class _Request:
    uid: str
    prompt_ids: list[int]
    sampling: Sampling
    budget: int  # new tokens it may still sample in all: max_tokens, or fewer where the context fills first
    generator: torch.Generator | None  # None for greedy
    generated: list[int] = field(default_factory=list)  # sampled ids that make its text (a stop token is not one)
    sampled: int = 0  # every sampled id, a stop token included
    next_token: int = 0  # the last sampled id: not yet in the cache, the next decode feeds it
    emitted: str = ""  # text already returned in Tokens

    @property
    def cached(self) -> int:
        """Tokens of this row in the KV cache (its real columns), which is also the position of next_token."""
        return len(self.prompt_ids) + self.sampled - 1


@dataclass
class _Batch:
    """The KV cache of the running rows, one key and one value tensor per layer, and the mask of their real columns."""

    keys: list[torch.Tensor]  # per layer [rows, kv_heads, columns, head_dim]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [rows, columns], 1 for a real token, 0 for left padding

    @classmethod
    def of(cls, cache: DynamicCache, mask: torch.Tensor) -> _Batch:
        return cls([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], mask)

    def cache(self) -> DynamicCache:
        """A DynamicCache over these tensors without copying them (DynamicCache(ddp_cache_data=...) would copy each).
        The forward concatenates the new token into new tensors: this batch is left as it was if the forward fails."""
        cache = DynamicCache()
        for keys, values in zip(self.keys, self.values):
            layer = DynamicLayer()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
            cache.layers.append(layer)
        return cache

    def select(self, rows: list[int]) -> _Batch:
        """These rows only, without the leading columns that are padding in all of them."""
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask[index]
        start = int(mask.any(0).int().argmax())  # the first column some row uses
        return _Batch(
            [k[index, :, start:] for k in self.keys], [v[index, :, start:] for v in self.values], mask[:, start:]
        )

    @staticmethod
    def concat(batches: list[_Batch]) -> _Batch:
        """Rows of all batches, each left-padded to the longest."""
        width = max(b.mask.shape[1] for b in batches)

        def pad(t: torch.Tensor, extra: int) -> torch.Tensor:  # along the columns: dim -2 of [rows, heads, cols, dim]
            return F.pad(t, (0, 0, extra, 0)) if extra else t

        grow = [width - b.mask.shape[1] for b in batches]
        layers = range(len(batches[0].keys))
        return _Batch(
            [torch.cat([pad(b.keys[i], g) for b, g in zip(batches, grow)]) for i in layers],
            [torch.cat([pad(b.values[i], g) for b, g in zip(batches, grow)]) for i in layers],
            torch.cat([F.pad(b.mask, (g, 0)) for b, g in zip(batches, grow)]),
        )


def _context_of(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        raise ValueError("the model's config has no max_position_embeddings: pass max_context")
    return int(positions)


def _forward_kwargs(model) -> tuple[str, dict]:
    """How to pass the cache (`cache` in transformers 5.2x; `past_key_values`, its deprecated name, elsewhere), and
    logits_to_keep=1 where the model takes it (the prefill then computes the vocab projection of the last column only).
    A peft wrapper takes **kwargs and hands them to the model it wraps, so that model's signature decides."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(inner.forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), (
        {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    )


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of text that is the start of a stop string (it may become one with the next tokens)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def _one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


class Engine:
    """Continuous batching over one HF causal LM (or a peft wrapper of one): `add` requests from any thread, call
    `step` in one worker thread; each step returns one Token per active request."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int = 8,
        stop_token_ids: Iterable[int] = (),
        max_context: int | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.stop_token_ids = frozenset(int(i) for i in stop_token_ids)
        self.max_context = int(max_context) if max_context else _context_of(model)
        self.device = next(model.parameters()).device
        self._cache_kwarg, self._forward_extra = _forward_kwargs(model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad) if pad is not None else 0  # any id: padding is masked out
        self._lock = threading.Lock()  # guards the queue, the uids and the count; the rest is the step thread's
        self._queue: deque[_Request] = deque()
        self._uids: set[str] = set()  # queued or active
        self._admitted = 0  # rows running or being prefilled
        self._rows: list[_Request] = []  # the running rows, in the order of the batch's rows
        self._batch: _Batch | None = None

    # The server's side: any thread.

    def add(self, uid: str, prompt_ids: list[int], sampling: Sampling) -> None:
        """Queue a request; it joins the batch at the next step with a free slot."""
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise ValueError(f"request {uid!r}: the prompt is empty")
        room = self.max_context - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"request {uid!r}: a prompt of {len(prompt_ids)} tokens leaves no room for an answer "
                f"in a context of {self.max_context}"
            )
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(device=self.device)
            if sampling.seed is None:
                generator.seed()
            else:
                generator.manual_seed(sampling.seed)
        request = _Request(uid, prompt_ids, sampling, min(sampling.max_tokens, room), generator)
        with self._lock:
            if uid in self._uids:
                raise ValueError(f"request {uid!r} is already queued or running")
            self._uids.add(uid)
            self._queue.append(request)

    def has_capacity(self) -> bool:
        with self._lock:
            return self._admitted + len(self._queue) < self.max_batch_size

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._admitted or self._queue)

    @property
    def active(self) -> int:
        """Rows in the running batch (the batch size)."""
        with self._lock:
            return self._admitted

    @property
    def queued(self) -> int:
        """Requests added but not yet prefilled (the queue depth)."""
        with self._lock:
            return len(self._queue)

    # The worker's side: one thread.

    def step(self) -> list[Token]:
        """Decode one token for every running row, let finished rows leave, then prefill queued requests into the free
        slots (their first token is this step's token for them)."""
        with torch.inference_mode():
            tokens = self._decode() if self._rows else []
            free = self.max_batch_size - len(self._rows)
            with self._lock:
                joining = [self._queue.popleft() for _ in range(min(free, len(self._queue)))]
                self._admitted += len(joining)
            if joining:
                tokens += self._join(joining)
        return tokens

    def _decode(self) -> list[Token]:
        position = {id(row): i for i, row in enumerate(self._rows)}
        batch = self._batch

        def run(rows: list[_Request]) -> tuple[torch.Tensor, _Batch]:
            sub = batch if len(rows) == len(self._rows) else batch.select([position[id(r)] for r in rows])
            ids = torch.tensor([[r.next_token] for r in rows], device=self.device)
            positions = torch.tensor([[r.cached] for r in rows], device=self.device)
            mask = torch.cat([sub.mask, sub.mask.new_ones(len(rows), 1)], dim=1)
            return self._forward(ids, mask, positions, sub.cache())

        rows, logits, batch, tokens = self._isolated(self._rows, run)
        self._rows, self._batch = self._advance(rows, logits, batch, tokens)
        return tokens

    def _join(self, joining: list[_Request]) -> list[Token]:
        def run(rows: list[_Request]) -> tuple[torch.Tensor, _Batch]:
            width = max(len(r.prompt_ids) for r in rows)
            ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
                mask[i, width - len(r.prompt_ids) :] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            positions = (mask.cumsum(1) - 1).clamp(min=0)  # each row counts from 0 at its first real token
            return self._forward(ids, mask, positions, DynamicCache())

        rows, logits, batch, tokens = self._isolated(joining, run)
        rows, batch = self._advance(rows, logits, batch, tokens)
        if rows:
            self._rows = self._rows + rows
            self._batch = _Batch.concat([self._batch, batch]) if self._batch is not None else batch
        return tokens

    def _forward(self, ids, mask, positions, cache: DynamicCache) -> tuple[torch.Tensor, _Batch]:
        kwargs = {self._cache_kwarg: cache, **self._forward_extra}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1].float(), _Batch.of(cache, mask)

    def _isolated(self, rows: list[_Request], run):
        """run(rows) -> (last logits, their batch). If the batched forward raises, run each row alone: the rows that
        fail alone end with an "error" Token, the others go on. Returns (rows, logits, batch, error tokens)."""
        try:
            logits, batch = run(rows)
            return rows, logits, batch, []
        except Exception as error:  # noqa: BLE001 - any failure inside the model is some request's, found below
            if len(rows) == 1:
                return [], None, None, [self._failed(rows[0], error)]
            log.warning(
                "a batched forward of %d rows failed (%s); running them one by one", len(rows), _one_line(error)
            )
        survivors, logits, batches, errors = [], [], [], []
        for row in rows:
            try:
                row_logits, row_batch = run([row])
            except Exception as error:  # noqa: BLE001
                errors.append(self._failed(row, error))
                continue
            survivors.append(row)
            logits.append(row_logits)
            batches.append(row_batch)
        if not survivors:
            return [], None, None, errors
        return survivors, torch.cat(logits), _Batch.concat(batches), errors

    def _failed(self, row: _Request, error: BaseException) -> Token:
        log.warning("request %s failed in the model: %s", row.uid, _one_line(error), exc_info=error)
        self._retire([row.uid])
        return Token(row.uid, "", None, None, "error", _one_line(error), len(row.prompt_ids), row.sampled)

    def _retire(self, uids: list[str]) -> None:
        with self._lock:
            self._uids.difference_update(uids)
            self._admitted -= len(uids)

    def _advance(self, rows, logits, batch, tokens: list[Token]) -> tuple[list[_Request], _Batch | None]:
        """Sample one token per row into tokens; return the rows still running and their batch."""
        if not rows:
            return [], None
        logprobs = torch.log_softmax(logits, dim=-1)
        keep, done = [], []
        for i, row in enumerate(rows):
            try:
                token = self._sample(row, logits[i], logprobs[i])
            except Exception as error:  # noqa: BLE001 - e.g. NaN logits: this row's problem only
                token = self._failed(row, error)
                tokens.append(token)
                continue
            tokens.append(token)
            (done if token.finish_reason else keep).append(i)
        self._retire([rows[i].uid for i in done])
        if len(keep) == len(rows):
            return rows, batch
        return [rows[i] for i in keep], (batch.select(keep) if keep else None)

    def _sample(self, row: _Request, logits: torch.Tensor, logprobs: torch.Tensor) -> Token:
        sampling = row.sampling
        if sampling.temperature == 0:
            token_id = int(logits.argmax())
        else:
            scores = logits / sampling.temperature
            if sampling.top_p < 1:
                scores = TopPLogitsWarper(sampling.top_p)(None, scores[None])[0]
            token_id = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=row.generator))
        row.sampled += 1
        row.next_token = token_id
        finish = None
        if token_id in self.stop_token_ids:
            finish = "stop"
        else:
            row.generated.append(token_id)
            if row.sampled >= row.budget:
                finish = "length"
        text, stopped = self._new_text(row, final=finish is not None)
        if stopped:
            finish = "stop"
        return Token(row.uid, text, token_id, float(logprobs[token_id]), finish, None, len(row.prompt_ids), row.sampled)

    def _new_text(self, row: _Request, final: bool) -> tuple[str, bool]:
        """The text to emit now and whether a stop string ended it. The whole generated text is decoded each time (a
        token's text can depend on its neighbours, and one character can span tokens); its end is held back while it
        is an incomplete character or could be the start of a stop string."""
        text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        stops = row.sampling.stop
        found = [i for i in (text.find(s) for s in stops) if i >= 0]
        stopped = bool(found)
        if stopped:
            text = text[: min(found)]
        elif not final:
            end = len(text)
            while end > len(row.emitted) and text[end - 1] == REPLACEMENT_CHAR:
                end -= 1
            end -= _partial_stop(text[len(row.emitted) : end], stops)
            text = text[:end]
        new = text[len(row.emitted) :]
        row.emitted += new
        return new, stopped
