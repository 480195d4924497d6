"""How examples become batches: shuffled or length-grouped order, dynamic padding, and packing.

Packing puts several examples in one row with position ids restarting at 0 for each; given position ids and no
attention mask, transformers builds a block-diagonal mask (sdpa/eager; flash-attention varlen on GPU), so no
example attends to another. The first token of each packed example gets no label: in the row it would be
"predicted" from the previous example's last token.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from lightning_ft.constants import IGNORE_INDEX


class StepBatchSampler(Sampler):
    """One process's training batches, as an endless stream of passes; every index comes paired with the loss terms
    of its whole optimizer step.

    The stream is a function of (seed, batches taken): pass n is ordered by a generator seeded with seed + n, and
    each iteration continues the stream from `taken`, the number of this process's batches that training has
    consumed (counted by the DataModule as batches reach the model, not as the loader prefetches them). Saved in
    the checkpoint, it makes a resumed run continue mid-pass with exactly the batches the uninterrupted run would
    have seen next, whatever Lightning's epoch bookkeeping says (torch's RandomSampler draws its order from the
    global RNG, and Lightning's epoch counter is off by one after some resumes: neither is used).

    The order is cut into batches; process r of W takes batches r, r + W, ...; each W x A consecutive batches
    (A = gradient accumulation) make one optimizer step. Every process knows
    every batch, so each computes the step's total of loss terms (label tokens) without communicating, and the
    module divides summed token losses by it: the loss is the token-weighted mean over the global batch however
    it is split across processes and accumulation (a mean of per-batch means would weigh short batches up).
    When a pass does not split evenly, the missing batches are copies that carry no loss (every label ignored):
    each process still runs a batch, as DDP needs, but nothing counts twice (DistributedSampler repeats examples).
    """

    def __init__(
        self,
        terms: Sequence[int],
        batch_size: int,
        seed: int,
        taken: int = 0,
        accumulate: int = 1,
        world_size: int = 1,
        rank: int = 0,
        order: Callable[[torch.Generator], list[int]] | None = None,
    ):
        self.terms = list(terms)
        self.batch_size, self.accumulate, self.world_size, self.rank = batch_size, accumulate, world_size, rank
        self.seed = seed
        self.taken = taken
        self.limit: int | None = None  # the most batches the next iteration yields (then no limit)
        self.order = order or (lambda generator: torch.randperm(len(self.terms), generator=generator).tolist())

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.terms) / self.batch_size) / self.world_size)

    def __iter__(self):
        """The rest of the current pass (all of the next one at a pass boundary)."""
        passes, skip = divmod(self.taken, len(self))
        limit, self.limit = self.limit, None
        yield from self.pass_batches(passes)[skip:][:limit]

    def taken_in_this_split(self, taken: int, world_size: int, batch_size: int) -> int:
        """`taken` batches of a run split into `world_size` processes x `batch_size`, in batches of this split: the
        same pass and, within it, as many examples as that run had seen, rounded down to this split's global batch.
        (A pass's order depends on the seed and pass number only, not on the split.)"""
        per_pass = math.ceil(math.ceil(len(self.terms) / batch_size) / world_size)
        passes, within = divmod(taken, per_pass)
        return passes * len(self) + within * world_size * batch_size // (self.world_size * self.batch_size)

    def pass_batches(self, number: int) -> list[list[tuple[int, int, bool]]]:
        """This process's batches of pass `number`: items (index, the step's loss-term total, real)."""
        order = self.order(torch.Generator().manual_seed(self.seed + number))
        batches = [[(i, True) for i in order[i : i + self.batch_size]] for i in range(0, len(order), self.batch_size)]
        padding = len(self) * self.world_size - len(batches)
        batches += [[(i, False) for i, _ in batch] for batch in batches[:padding]]
        per_step = self.world_size * self.accumulate
        mine = []
        for start in range(0, len(batches), per_step):
            step = batches[start : start + per_step]
            total = sum(self.terms[i] for batch in step for i, real in batch if real)
            mine += [[(i, total, real) for i, real in batch] for batch in step[self.rank :: self.world_size]]
        return mine


class ResumableLoader(DataLoader):
    """A DataLoader over a StepBatchSampler whose position Lightning saves in checkpoints and restores before
    iterating (its `state_dict` protocol for stateful loaders): a resumed run continues mid-pass.

    `epoch_position`: how many batches Lightning counts as done in its current epoch. Lightning resumes its epoch at
    that count, and after a save at an epoch's last batch (max_steps reached there) the count is the whole epoch:
    Lightning then fetches one more batch, steps the optimizer on it as the epoch's last, and every later step of
    the run is shifted by a batch (seen with gradient accumulation 4: a step of 1 batch, then steps across passes).
    So the first iteration after a restore yields only what Lightning's epoch has left; the stream goes on in the
    next.
    """

    def __init__(self, *args, epoch_position: Callable[[], int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_position = epoch_position
        self._restored = False

    def __iter__(self):
        if self._restored and self.epoch_position is not None:
            self.batch_sampler.limit = max(0, len(self.batch_sampler) - self.epoch_position())
        self._restored = False
        return super().__iter__()

    def state_dict(self) -> dict:
        sampler = self.batch_sampler
        return {"batches_taken": sampler.taken, "split": [sampler.world_size, sampler.batch_size]}

    def load_state_dict(self, state: dict) -> None:
        sampler = self.batch_sampler
        split = state.get("split", [sampler.world_size, sampler.batch_size])
        sampler.taken = sampler.taken_in_this_split(state["batches_taken"], *split)
        self._restored = True
        if split != [sampler.world_size, sampler.batch_size]:
            rank_zero_warn(
                f"resuming with {sampler.world_size} process(es) x batch {sampler.batch_size}, saved with {split[0]} x "
                f"{split[1]}: the pass continues at the same example, rounded down to a whole step (a few may repeat)"
            )


class WithStepTerms(Dataset):
    """Items fetched as (index, step terms, real), returned with the step's loss-term total and the ids of the
    examples in them (training-set indices; none for padding copies, which keep their tokens but lose every label)."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int, bool]) -> dict:
        index, step_terms, real = item
        example = self.data[index]
        ids = self.data.rows[index] if isinstance(self.data, PackedDataset) else [index]
        if not real:
            labels = example["labels"]
            example = {**example, "labels": [IGNORE_INDEX] * len(labels) if isinstance(labels, list) else IGNORE_INDEX}
        return {**example, "step_terms": step_terms, "example_ids": ids if real else []}


class WithIndex(Dataset):
    """Items with their index in `example_ids`, as training items carry theirs (precomputed references look
    their examples up by it)."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return {**self.data[index], "example_ids": [index]}


def length_grouped_order(lengths: Sequence[int], batch_size: int) -> Callable[[torch.Generator], list[int]]:
    """Shuffled mega-batches of 50 batches, sorted by length inside (transformers' group_by_length)."""
    return lambda generator: get_length_grouped_indices(list(lengths), batch_size, generator=generator)


def pack(lengths: Sequence[int], max_length: int, seed: int) -> list[list[int]]:
    """Rows of example indices whose lengths sum to at most max_length: best fit, longest first (as TRL packs).

    Each example goes to the fullest row it still fits in, the longest placed first, the short ones filling the
    gaps: on alpaca_gpt4_en_demo 98% of the tokens are real, against 94.6% placing them in random order
    (BENCHMARKS.md). Rows are shuffled when batched, so batches stay random; the seed orders equal lengths.
    Every example lands in exactly one row.
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda index: -lengths[index])  # stable: equal lengths keep the seeded order
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row number), sorted
    for index in order:
        slot = bisect.bisect_left(free, (lengths[index], -1))
        if slot == len(free):
            rows.append([index])
            room, row = max_length - lengths[index], len(rows) - 1
        else:
            room, row = free.pop(slot)
            rows[row].append(index)
            room -= lengths[index]
        bisect.insort(free, (room, row))
    return rows


def rows_per_batch(batch_size: int, rows: int, examples: int) -> int:
    """Packed rows per batch that hold about `batch_size` examples on average (at least one row).

    The batch size counts examples whatever the batching, so switching to packing keeps the optimizer's batch and
    its number of steps per pass about the same (a fixed count of full rows would take fewer, larger steps: on
    alpaca_gpt4_en_demo, 8 rows hold ~20 examples, and one pass took 11 steps instead of 25; BENCHMARKS.md).
    """
    return max(1, round(batch_size * rows / examples)) if examples else 1


class PackedDataset(Dataset):
    """Rows of several tokenized examples, concatenated, with position ids restarting for each sequence (an example
    of several, a preference pair, keeps its sequences apart and numbers them on through the row)."""

    def __init__(self, examples, rows: list[list[int]]) -> None:
        self.examples = examples
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        input_ids, labels, sequence = [], [], []
        for example_index in self.rows[index]:
            example = self.examples[example_index]
            input_ids += example["input_ids"]
            labels += [IGNORE_INDEX] + example["labels"][1:]
            first = sequence[-1] + 1 if sequence else 0
            sequence += [first + s for s in example.get("sequence") or [0] * len(example["input_ids"])]
        row = {"input_ids": input_ids, "labels": labels, "position_ids": positions(sequence)}
        if "desirable" in example:  # one per example, in the row's order
            row["desirable"] = [self.examples[i]["desirable"] for i in self.rows[index]]
        return row | ({"sequence": sequence} if "sequence" in example else {})


def positions(sequence: list[int]) -> list[int]:
    """Position ids restarting at 0 wherever the sequence number changes."""
    ids = []
    for index, number in enumerate(sequence):
        ids.append(ids[-1] + 1 if index and number == sequence[index - 1] else 0)
    return ids


def collate(examples: list[dict], pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch (rounded up to a multiple, for tensor cores).

    Packed rows carry position_ids and get no attention mask (that is what makes transformers build the
    block-diagonal mask); their padding is one more "example" with its own positions and no labels.

    Examples of several sequences (preference pairs: chosen, rejected) number them across the batch in
    `sequence_ids` (-1 for padding), the k-th example's s-th sequence being number k * S + s: objectives sum
    log-probs per sequence by them. Packed, a row holds whole examples; unpacked, each sequence gets a row of its
    own, the batch's first sequences first (TRL's layout: every chosen, then every rejected).

    Hand-written rather than transformers' collators: those need one class for token labels and another for
    class ids, and none produces the packed layout.
    """
    given = examples
    if "sequence" in examples[0]:
        examples = number_sequences(examples)
        if "position_ids" not in examples[0]:
            examples = one_row_per_sequence(examples)
    width = max(len(e["input_ids"]) for e in examples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    packed = "position_ids" in examples[0]
    batch = {"input_ids": torch.full((len(examples), width), pad_token_id, dtype=torch.long)}
    if packed:
        batch["position_ids"] = torch.zeros((len(examples), width), dtype=torch.long)
    else:
        batch["attention_mask"] = torch.zeros((len(examples), width), dtype=torch.long)
    if "sequence" in examples[0]:
        batch["sequence_ids"] = torch.full((len(examples), width), -1, dtype=torch.long)
    token_labels = isinstance(examples[0]["labels"], list)
    if token_labels:
        batch["labels"] = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(example["input_ids"])
        if token_labels:
            batch["labels"][row, :n] = torch.tensor(example["labels"])
        if packed:
            batch["position_ids"][row, :n] = torch.tensor(example["position_ids"])
            batch["position_ids"][row, n:] = torch.arange(width - n)
        else:
            batch["attention_mask"][row, :n] = 1
        if "sequence_ids" in batch:
            batch["sequence_ids"][row, :n] = torch.tensor(example["sequence"])
    if not token_labels:
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    if "desirable" in given[0]:  # KTO's label, per example in the order of their sequence numbers
        batch["desirable"] = torch.tensor([d for e in given for d in numbers(e["desirable"])], dtype=torch.bool)
    if "step_terms" in given[0]:
        batch["step_terms"] = torch.tensor(given[0]["step_terms"])
    if "example_ids" in given[0]:
        batch["example_ids"] = torch.tensor([i for e in given for i in e["example_ids"]], dtype=torch.long)
    batch["num_tokens"] = torch.tensor(sum(len(e["input_ids"]) for e in given))  # real tokens: throughput counts
    return batch


def numbers(value: int | list[int]) -> list[int]:
    return value if isinstance(value, list) else [value]


def number_sequences(examples: list[dict]) -> list[dict]:
    """Each example's sequences numbered on from the previous example's: k * S + s when each holds S."""
    numbered, first = [], 0
    for example in examples:
        numbered.append({**example, "sequence": [first + s for s in example["sequence"]]})
        first = numbered[-1]["sequence"][-1] + 1
    return numbered


def one_row_per_sequence(examples: list[dict]) -> list[dict]:
    """Every sequence of every example as a row of its own: each example's first sequences, then their second..."""
    rows: dict[int, list[dict]] = {}  # by the sequence's place in its example
    for example in examples:
        sequence, start = example["sequence"], 0
        for end in range(1, len(sequence) + 1):
            if end == len(sequence) or sequence[end] != sequence[start]:
                piece = {key: example[key][start:end] for key in ("input_ids", "labels", "sequence")}
                rows.setdefault(sequence[start] - sequence[0], []).append(piece)
                start = end
    return [row for place in sorted(rows) for row in rows[place]]


def padding_waste(lengths: Sequence[int], batch_size: int, max_length: int, seed: int) -> dict[str, float]:
    """Share of pad tokens among all tokens in one pass, for each way of batching the same examples."""

    def waste(batches: list[list[int]], width=None) -> float:
        real = sum(sum(batch) for batch in batches)
        total = sum(len(batch) * (width or max(batch)) for batch in batches)
        return round(1 - real / total, 4) if total else 0.0

    def batched(values: list[int], size: int = batch_size) -> list[list[int]]:
        return [values[i : i + size] for i in range(0, len(values), size)]

    generator = torch.Generator().manual_seed(seed)
    shuffled = [lengths[i] for i in torch.randperm(len(lengths), generator=generator).tolist()]
    grouped = [lengths[i] for i in get_length_grouped_indices(list(lengths), batch_size, generator=generator)]
    rows = [sum(lengths[i] for i in row) for row in pack(lengths, max_length, seed)]
    return {
        "pad_to_max_length": waste(batched(shuffled), width=max_length),
        "dynamic": waste(batched(shuffled)),
        "group_by_length": waste(batched(grouped)),
        "pack": waste(batched(rows, rows_per_batch(batch_size, len(rows), len(lengths)))),
    }
