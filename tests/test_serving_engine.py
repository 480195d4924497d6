"""The continuous-batching engine behind `lightning-ft serve`: what it generates equals HF generate, whatever is batched
with it and whenever it joins; sampling, stops, usage, slots, failure isolation and adds from another thread."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_ft.serving.engine import Engine, Sampling

PROMPTS = ["red", "cat dog cow pig owl fox bee ant", "gold white", "blue green black white pink gray"]
GREEDY = Sampling(max_tokens=10, temperature=0)


@pytest.fixture(scope="module")
def lm(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def reference(model, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """HF greedy generate on the prompt alone: n new ids and the log-probs of the model's raw logits for them."""
    out = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    ids = out.sequences[0, len(prompt_ids) :].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[i].item() for step, i in zip(out.logits, ids)]
    return ids, logprobs


def drain(engine: Engine, schedule: dict[int, list[tuple[str, list[int], Sampling]]] | None = None):
    """Step until no work is left, adding schedule[k] before step k; returns every Token by uid, and per step the
    tokens' uids with engine.active / engine.queued after it."""
    schedule = dict(schedule or {})
    by_uid, steps, k = {}, [], 0
    while engine.has_work() or schedule:
        for uid, ids, sampling in schedule.pop(k, []):
            engine.add(uid, ids, sampling)
        tokens = engine.step()
        for token in tokens:
            by_uid.setdefault(token.uid, []).append(token)
        steps.append(([t.uid for t in tokens], engine.active, engine.queued))
        k += 1
    return by_uid, steps


def ids_of(tokens) -> list[int]:
    return [t.token_id for t in tokens]


def test_greedy_equals_generate_batched_and_joining(lm):
    model, tokenizer = lm
    prompts = [encode(tokenizer, p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # rows of different lengths: left padding is in play
    refs = [reference(model, p, GREEDY.max_tokens) for p in prompts]

    together, _ = drain(Engine(model, tokenizer), {0: [(str(i), p, GREEDY) for i, p in enumerate(prompts)]})
    # Joining at different steps, with different lengths so rows also leave while others run.
    lengths = [10, 4, 7, 10]
    joining, _ = drain(
        Engine(model, tokenizer),
        {
            k: [(str(i), p, Sampling(max_tokens=n, temperature=0))]
            for i, (k, p, n) in enumerate(zip([0, 2, 3, 5], prompts, lengths))
        },
    )
    for i, (ids, logprobs) in enumerate(refs):
        assert ids_of(together[str(i)]) == ids
        assert ids_of(joining[str(i)]) == ids[: lengths[i]]
        assert [t.logprob for t in together[str(i)]] == pytest.approx(logprobs, abs=1e-4)
        assert [t.finish_reason for t in together[str(i)]] == [None] * 9 + ["length"]


def test_greedy_through_a_peft_wrapper(lm):
    peft = pytest.importorskip("peft")
    model, tokenizer = lm
    wrapped = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(model.name_or_path),
        peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    ).eval()
    prompts = [encode(tokenizer, p) for p in PROMPTS[:2]]
    got, _ = drain(Engine(wrapped, tokenizer), {0: [(str(i), p, GREEDY) for i, p in enumerate(prompts)]})
    for i, p in enumerate(prompts):
        assert ids_of(got[str(i)]) == reference(wrapped, p, GREEDY.max_tokens)[0]


def test_sampling_seeds_temperature_zero_and_tiny_top_p(lm):
    model, tokenizer = lm
    prompt = encode(tokenizer, PROMPTS[1])
    seeded = Sampling(max_tokens=12, temperature=1.0, seed=7)
    alone, _ = drain(Engine(model, tokenizer), {0: [("a", prompt, seeded)]})
    others = [(f"o{i}", encode(tokenizer, p), Sampling(max_tokens=5, seed=i)) for i, p in enumerate(PROMPTS)]
    batched, _ = drain(
        Engine(model, tokenizer),
        {0: others[:2], 1: [("a", prompt, seeded), ("b", prompt, Sampling(max_tokens=12, seed=8))], 3: others[2:]},
    )
    assert ids_of(batched["a"]) == ids_of(alone["a"])
    assert ids_of(batched["b"]) != ids_of(alone["a"])

    greedy = reference(model, prompt, 12)[0]
    assert ids_of(alone["a"]) != greedy  # sampling at temperature 1 is not argmax on this model
    cases = {"t0": Sampling(max_tokens=12, temperature=0, seed=3), "p": Sampling(max_tokens=12, top_p=1e-6, seed=3)}
    got, _ = drain(Engine(model, tokenizer), {0: [(uid, prompt, s) for uid, s in cases.items()]})
    assert ids_of(got["t0"]) == greedy
    assert ids_of(got["p"]) == greedy


@pytest.fixture
def scripted(lm):
    """The model made to answer `text` token by token, whichever rows are batched (by each row's position)."""
    model, _ = lm
    handles = []

    def script(answer_ids: list[int], prompt_len: int):
        script_ids = torch.tensor(answer_ids)

        def force(module, args, kwargs, output):
            index = (kwargs["position_ids"][:, -1] - prompt_len + 1).clamp(0, len(answer_ids) - 1)
            logits = torch.full_like(output.logits, -30.0)
            logits[torch.arange(len(index)), -1, script_ids[index]] = 0.0
            output.logits = logits
            return output

        handles.append(model.register_forward_hook(force, with_kwargs=True))

    yield script
    for handle in handles:
        handle.remove()


def run_text(engine: Engine, prompt: list[int], sampling: Sampling):
    tokens = drain(engine, {0: [("r", prompt, sampling)]})[0]["r"]
    return "".join(t.text for t in tokens), tokens


def test_stop_strings_stop_ids_length_and_usage(lm, scripted):
    model, tokenizer = lm
    prompt = encode(tokenizer, "red blue")
    text = "green. END of caté 🐱 dog"
    answer = encode(tokenizer, text)
    eos = tokenizer.eos_token_id
    scripted(answer + [eos] + encode(tokenizer, " never"), len(prompt))

    # A stop string spanning several tokens ends the request and is cut; nothing of it was streamed before.
    stop = ". END"
    assert not any(stop in tokenizer.decode([i]) for i in answer)
    out, tokens = run_text(Engine(model, tokenizer), prompt, Sampling(max_tokens=50, temperature=0, stop=("xyz", stop)))
    assert out == "green"
    assert tokens[-1].finish_reason == "stop" and all(t.finish_reason is None for t in tokens[:-1])
    assert (tokens[-1].prompt_tokens, tokens[-1].completion_tokens) == (len(prompt), len(tokens))

    # A stop id ends it with "stop", its text not in the output; multi-byte characters split over byte tokens are
    # streamed whole (no U+FFFD in any piece).
    out, tokens = run_text(
        Engine(model, tokenizer, stop_token_ids=[eos]), prompt, Sampling(max_tokens=50, temperature=0)
    )
    assert out == text
    assert "\ufffd" not in "".join(t.text for t in tokens) and any(t.text == "" for t in tokens)
    assert (tokens[-1].token_id, tokens[-1].finish_reason, tokens[-1].completion_tokens) == (
        eos,
        "stop",
        len(answer) + 1,
    )

    # max_tokens ends it with "length"; so does a full context, before max_tokens.
    out, tokens = run_text(Engine(model, tokenizer), prompt, Sampling(max_tokens=3, temperature=0))
    assert (out, tokens[-1].finish_reason, tokens[-1].completion_tokens) == (tokenizer.decode(answer[:3]), "length", 3)
    engine = Engine(model, tokenizer, max_context=len(prompt) + 4)
    _, tokens = run_text(engine, prompt, Sampling(max_tokens=10, temperature=0))
    assert (len(tokens), tokens[-1].finish_reason) == (4, "length")
    with pytest.raises(ValueError, match="no room"):
        engine.add("long", list(range(5, 5 + len(prompt) + 4)), GREEDY)
    engine.add("x", prompt, GREEDY)
    with pytest.raises(ValueError, match="already"):
        engine.add("x", prompt, GREEDY)


def test_finished_rows_leave_and_queued_ones_take_their_slots(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_batch_size=2)
    lengths = {"a": 2, "b": 5, "c": 3, "d": 1}
    for uid, n in lengths.items():
        engine.add(uid, encode(tokenizer, PROMPTS[0]), Sampling(max_tokens=n, temperature=0))
        assert engine.has_capacity() == (engine.queued < 2)
    assert (engine.active, engine.queued) == (0, 4)
    by_uid, steps = drain(engine)
    assert steps == [
        (["a", "b"], 2, 2),
        (["a", "b", "c"], 2, 1),  # a ends in the decode; c takes its slot in the same step
        (["b", "c"], 2, 1),  # no slot free: d waits
        (["b", "c", "d"], 1, 0),  # c ends, d takes its slot and is done at its first token
        (["b"], 0, 0),
    ]
    assert {uid: len(tokens) for uid, tokens in by_uid.items()} == lengths
    assert engine.has_capacity() and not engine.has_work()


def test_a_request_that_breaks_the_model_fails_alone(lm):
    model, tokenizer = lm
    good = [encode(tokenizer, p) for p in PROMPTS[:3]]
    refs = [reference(model, p, 8)[0] for p in good]
    limit = 40  # the last layer raises for a row past this position, halfway through the forward
    rng = random.Random(0)
    bad_prompt = [rng.randrange(5, 200) for _ in range(limit + 2)]  # fails in its prefill
    bad_decode = bad_prompt[: limit - 3]  # prefills fine (1 token), decodes 3 more, fails at the 4th decode
    assert all(len(p) + 8 < limit for p in good)

    def refuse(module, args, kwargs):
        if int(kwargs["position_ids"].max()) >= limit:
            raise RuntimeError(f"position past {limit}\nsecond line")

    handle = model.model.layers[-1].register_forward_pre_hook(refuse, with_kwargs=True)
    try:
        engine = Engine(model, tokenizer)
        some = Sampling(max_tokens=8, temperature=0)
        by_uid, _ = drain(
            engine,
            {
                0: [("g0", good[0], some), ("bad_decode", bad_decode, some)],
                2: [("g1", good[1], some), ("bad_prompt", bad_prompt, some), ("g2", good[2], some)],
            },
        )
    finally:
        handle.remove()
    for uid, n in (("bad_decode", 5), ("bad_prompt", 1)):
        last = by_uid[uid][-1]
        assert len(by_uid[uid]) == n and (last.finish_reason, last.token_id) == ("error", None)
        assert last.error == f"RuntimeError: position past {limit}"
    for i, ref in enumerate(refs):
        assert ids_of(by_uid[f"g{i}"]) == ref
    assert (engine.active, engine.queued) == (0, 0)


def test_adds_from_the_event_loop_while_steps_run_in_a_thread(lm):
    model, tokenizer = lm
    prompts = {f"r{i}": encode(tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(8)}
    refs = {p: reference(model, ids, 6)[0] for p, ids in prompts.items() if p in ("r0", "r1", "r2", "r3")}
    engine = Engine(model, tokenizer, max_batch_size=3)
    finished: dict[str, list] = {}

    async def serve() -> None:
        async def client() -> None:  # as LitServe does: add from the event loop, at any time
            for uid, ids in prompts.items():
                while not engine.has_capacity():
                    await asyncio.sleep(0.001)
                engine.add(uid, ids, Sampling(max_tokens=6, temperature=0))
                await asyncio.sleep(0.002)

        adding = asyncio.create_task(client())
        while not adding.done() or engine.has_work():
            for token in await asyncio.to_thread(engine.step):
                finished.setdefault(token.uid, []).append(token)
            await asyncio.sleep(0)
        await adding

    asyncio.run(serve())
    assert sorted(finished) == sorted(prompts)
    for uid, tokens in finished.items():
        assert [t.finish_reason for t in tokens] == [None] * 5 + ["length"]
        assert ids_of(tokens) == refs[f"r{int(uid[1:]) % len(PROMPTS)}"]
