"""The engine of a served sequence classifier: each step scores every queued request in one padded forward.

It has the generation engine's interface (engine.py), so the same worker and loop serve both; a request is done in
the step that scores it. A forward that fails is retried request by request, so only a request that breaks the
model fails.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from lightning_ft.errors import first_line


@dataclass
class Scores:
    uid: str
    scores: dict[str, float] | None  # label -> probability
    prompt_tokens: int
    finish_reason: str = "stop"
    error: str | None = None


class Classifier:
    def __init__(self, model, tokenizer, labels: list[str], *, max_batch_size: int = 8) -> None:
        self.model, self.labels, self.max_batch_size = model.eval(), labels, max_batch_size
        self.pad_id = tokenizer.pad_token_id
        self.lock = threading.Lock()  # `add` comes from the event loop's thread, `step` from a worker thread
        self.waiting: list[tuple[str, list[int]]] = []

    def add(self, uid: str, prompt_ids: list[int], sampling=None) -> None:
        with self.lock:
            self.waiting.append((uid, list(prompt_ids)))

    def has_capacity(self) -> bool:
        return self.queued < self.max_batch_size

    def has_work(self) -> bool:
        return bool(self.waiting)

    @property
    def active(self) -> int:
        return 0  # nothing stays in a batch between steps

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @torch.inference_mode()
    def step(self) -> list[Scores]:
        with self.lock:
            batch, self.waiting = self.waiting[: self.max_batch_size], self.waiting[self.max_batch_size :]
        try:
            return self.score(batch)
        except Exception:  # noqa: BLE001 (which request broke the model: each alone)
            results = []
            for request in batch:
                try:
                    results += self.score([request])
                except Exception as err:  # noqa: BLE001 (this one did: it fails, the others are answered)
                    results.append(Scores(request[0], None, len(request[1]), "error", first_line(err)))
            return results

    def score(self, batch: list[tuple[str, list[int]]]) -> list[Scores]:
        longest = max(len(ids) for _, ids in batch)
        device = next(self.model.parameters()).device
        # right padding with a mask: HF classifiers read the last token that is not padding
        ids = torch.tensor([ids + [self.pad_id] * (longest - len(ids)) for _, ids in batch], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for _, ids in batch], device=device)
        probabilities = self.model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1).cpu()
        return [
            Scores(uid, dict(zip(self.labels, row.tolist(), strict=True)), len(prompt))
            for (uid, prompt), row in zip(batch, probabilities, strict=True)
        ]
