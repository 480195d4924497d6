"""Fault injection: kills, crashes mid-save, torn and hostile checkpoint files, bad batches, out of memory.

Every resumed run is held to the uninterrupted one exactly: per-step losses and the examples of every batch, in
order (recorded by tests/scripts/record_steps.py), and the final weights.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import ROOT, build_tiny_llama

from lightning_ft import FineTuneModule, files
from lightning_ft.callbacks import Preemption
from lightning_ft.checkpoints import UnreadableCheckpoint, checkpoint_step, newest_checkpoint
from lightning_ft.distributed.sharding import save_staged
from lightning_ft.files import remove_partial_files

SCRIPTS = ROOT / "tests/scripts"
sys.path.insert(0, str(SCRIPTS))  # record_steps, for the runs in this process

# LoRA with dropout (the RNG must resume too), a warmup that kills often fall inside (the schedule must resume), a
# checkpoint every 2 steps, runs long enough to cross epochs.
COMMON = [
    *("--model.method", "LoRA", "--model.method.dropout", "0.1", "--model.optim.warmup_steps", "8"),
    *("--checkpoint.every_n_train_steps", "2"),
]
BATCHING = {
    "pad": ["--data.batching", "pad", "--data.batch_size", "4"],  # 8 steps an epoch
    "pack": ["--data.batching", "pack", "--data.max_length", "640", "--data.batch_size", "2"],
    "group_by_length": ["--data.batching", "group_by_length", "--data.batch_size", "4"],
}


def recording(args: list[str], log: Path) -> list[str]:
    callback = {"class_path": "record_steps.RecordSteps", "init_args": {"path": str(log)}}
    return [*args, f"--trainer.callbacks+={json.dumps(callback)}"]


def recorded(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)


def trained_weights(run_dir: Path) -> dict:
    return last_checkpoint(run_dir)["state_dict"]


def assert_same_run(straight: Path, resumed: Path, log: list[dict], straight_log: Path) -> None:
    """Same batches (example ids, in order), same per-step losses, bitwise; same final weights, optimizer moments
    and schedule."""
    assert log == recorded(straight_log)
    a, b = last_checkpoint(straight), last_checkpoint(resumed)
    assert a["global_step"] == b["global_step"] and a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def start_fit(args: list[str], output: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")])}
    with output.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "lightning_ft", *args], stdout=out, stderr=out, env=env)


@pytest.mark.parametrize("batching", [*BATCHING, "dpo"])
def test_sigkill_at_a_random_step_then_resume_equals_the_uninterrupted_run(cli, fit_args, data_dir, tmp_path, batching):
    """SIGKILL from outside at a step drawn per trial (never the same across the four); a rerun continues from the
    newest checkpoint, mid-epoch, and sees exactly the batches the uninterrupted run saw. DPO too, on pairs."""
    kill_at = random.Random(batching).randint(3, 13)
    pairs = [
        "--data.train_path",
        str(data_dir / "pref_train.jsonl"),
        "--data.val_path",
        str(data_dir / "pref_val.jsonl"),
    ]
    dpo = ["--model.objective", "DPO", "--data.format", "preference", *pairs, "--generation.num_samples", "0"]
    batches = BATCHING.get(batching) or [*BATCHING["pad"], *dpo]

    def args(run: str, log: Path) -> list[str]:
        return recording(fit_args(*COMMON, *batches, "--trainer.max_steps", "16", run_dir=tmp_path / run), log)

    assert cli(args("straight", tmp_path / "straight.jsonl")) == 0
    first = tmp_path / "killed.jsonl"
    process = start_fit(args("run", first), tmp_path / "killed.out")
    deadline = time.monotonic() + 240
    while not any(row["step"] >= kill_at for row in recorded(first)[-1:]):
        assert process.poll() is None, (tmp_path / "killed.out").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the step to kill it at"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()

    saved = checkpoint_step(newest_checkpoint(tmp_path / "run"))
    assert 2 <= saved <= kill_at
    record = json.loads((tmp_path / "run/run.json").read_text())  # nothing could update it: still "running"
    assert record["status"] == "running" and Path(record["checkpoints"]["last"]).exists()
    second = tmp_path / "resumed.jsonl"
    assert cli(args("run", second)) == 0  # the same command: --ckpt_path auto
    assert recorded(second)[0]["step"] == saved + 1
    before = [row for row in recorded(first) if row["step"] <= saved]
    assert_same_run(tmp_path / "straight", tmp_path / "run", before + recorded(second), tmp_path / "straight.jsonl")


@pytest.mark.parametrize("stop_at", [12, 13])
def test_a_run_stopped_at_the_end_of_a_pass_resumes_with_gradient_accumulation(cli, fit_args, tmp_path, stop_at):
    """32 examples, batch 4, accumulation 4: 2 steps a pass. Stopped by max_steps at step 12 (the pass's last batch)
    and resumed to 16, Lightning restarted its finished epoch and stepped on one extra batch: every later step took
    the wrong batches. Stopped at 13 (mid-pass) it resumed right. Both equal the uninterrupted run now."""
    accumulate = [*BATCHING["pad"], "--trainer.accumulate_grad_batches", "4"]
    accumulate += ["--model.optim.scheduler", "constant"]  # a cosine would decay to each run's own max_steps

    def args(run: str, log: Path, steps: int) -> list[str]:
        return recording(fit_args(*COMMON, *accumulate, "--trainer.max_steps", str(steps), run_dir=tmp_path / run), log)

    assert cli(args("straight", tmp_path / "straight.jsonl", 16)) == 0
    assert cli(args("run", tmp_path / "first.jsonl", stop_at)) == 0
    assert cli(args("run", tmp_path / "resumed.jsonl", 16)) == 0
    log = recorded(tmp_path / "first.jsonl") + recorded(tmp_path / "resumed.jsonl")
    assert_same_run(tmp_path / "straight", tmp_path / "run", log, tmp_path / "straight.jsonl")


def test_a_silent_peer_stops_the_run_within_the_peer_timeout_naming_it(fit_args, tmp_path):
    """A process that stops answering without closing its connections (a node losing power; here SIGSTOP) leaves
    the others in a collective until the process group's timeout, 30 minutes: the peer watch stops them after
    LIGHTNING_FT_PEER_TIMEOUT seconds of its silence, in one line naming it, and the run record says failed."""
    args = fit_args("--trainer.devices", "2", "--trainer.max_steps", "100000", "--trainer.max_epochs", "-1")
    args = [args[0], "--config", str(ROOT / "configs/strategy/ddp.yaml"), *args[1:]]
    env = {**os.environ, "LIGHTNING_FT_PEER_TIMEOUT": "5"}
    with (tmp_path / "fit.out").open("w") as out:
        fit = subprocess.Popen([sys.executable, "-m", "lightning_ft", *args], stdout=out, stderr=out, env=env)
    deadline = time.monotonic() + 240
    while "training from step 0" not in (tmp_path / "fit.out").read_text():
        assert fit.poll() is None and time.monotonic() < deadline, (tmp_path / "fit.out").read_text()[-3000:]
        time.sleep(0.2)
    peer = next(p for p in psutil.Process(fit.pid).children() if p.environ().get("LOCAL_RANK") == "1")
    peer.suspend()
    try:
        silent = time.monotonic()
        assert fit.wait(timeout=60) == 1
        took = time.monotonic() - silent
    finally:  # the stopped peer; and, when the watch failed, the run still waiting for it
        peer.kill()
        fit.kill()
    output = (tmp_path / "fit.out").read_text()
    assert 4 <= took < 15, took  # silent since its last beat, up to a second before it was stopped
    assert (
        f"error: lost rank 1 (node 0, host {socket.gethostname()}, pid {peer.pid}): no sign of life for 5 s" in output
    )
    record = json.loads((tmp_path / "run/run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("lost rank 1 (node 0"), record


class Crash(BaseException):
    """A crash that no `except Exception` catches, as a kill would not be."""


def test_a_crash_between_checkpoint_write_and_rename_resumes_from_the_previous_one(
    cli, fit_args, tmp_path, monkeypatch
):
    def args(run: str, log: Path) -> list[str]:
        return recording(fit_args(*COMMON, *BATCHING["pad"], "--trainer.max_steps", "6", run_dir=tmp_path / run), log)

    assert cli(args("straight", tmp_path / "straight.jsonl")) == 0
    commit, checkpoints = files.commit, []

    def crash_on_the_second_checkpoint(temporary: Path, path: Path) -> None:
        if path.suffix == ".ckpt":
            checkpoints.append(path)
            if len(checkpoints) == 2:  # written in full, not yet renamed: keep it as a kill would leave it
                os.link(temporary, temporary.with_name(temporary.name.replace(".partial", ".kept.partial")))
                raise Crash
        commit(temporary, path)

    monkeypatch.setattr(files, "commit", crash_on_the_second_checkpoint)
    with pytest.raises(Crash):
        cli(args("run", tmp_path / "crashed.jsonl"))
    monkeypatch.setattr(files, "commit", commit)
    leftovers = list((tmp_path / "run/checkpoints").glob(".*.partial"))
    assert len(leftovers) == 1 and checkpoint_step(tmp_path / "run/checkpoints/last.ckpt") == 2

    assert cli(args("run", tmp_path / "resumed.jsonl")) == 0
    assert not leftovers[0].exists()  # a kill's leftover (as large as a checkpoint) is cleaned up
    before = [row for row in recorded(tmp_path / "crashed.jsonl") if row["step"] <= 2]
    log = before + recorded(tmp_path / "resumed.jsonl")
    assert_same_run(tmp_path / "straight", tmp_path / "run", log, tmp_path / "straight.jsonl")


def test_torn_checkpoints_are_reported_and_skipped_for_the_previous_good_one(cli, fit_args, tmp_path, capsys):
    keep_all = ["--checkpoint.monitor", "null", "--checkpoint.save_top_k", "-1", "--checkpoint.filename", "{step}"]
    args = fit_args(*COMMON, *BATCHING["pad"], *keep_all, "--trainer.max_steps", "4")
    assert cli(args) == 0
    checkpoints = tmp_path / "run/checkpoints"
    for name in ("last.ckpt", "step=4.ckpt"):  # a power loss under a filesystem without ordered writes
        data = (checkpoints / name).read_bytes()
        (checkpoints / name).write_bytes(data[: len(data) // 3])

    with pytest.warns(UserWarning, match=r"skipping checkpoint .*last\.ckpt: not a readable checkpoint, cut short"):
        assert newest_checkpoint(tmp_path / "run") == checkpoints / "step=2.ckpt"
    assert cli(fit_args(*COMMON, *BATCHING["pad"], *keep_all, "--trainer.max_steps", "6")) == 0
    assert checkpoint_step(checkpoints / "last.ckpt") == 6  # saved where it belongs, not as last-v1.ckpt
    assert sorted(path.name for path in checkpoints.glob("*.unreadable")) == [
        "last.ckpt.unreadable",
        "step=4.ckpt.unreadable",
    ]

    (checkpoints / "torn.ckpt").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert cli(fit_args("--ckpt_path", str(checkpoints / "torn.ckpt"), run_dir=tmp_path / "other")) == 2
    assert (
        f"error: {checkpoints / 'torn.ckpt'}: not a readable checkpoint, cut short or corrupt"
        in capsys.readouterr().err
    )


class Bomb:
    """Unpickling this runs a shell command: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_bomb_is_refused_without_running_it(cli, fit_args, tmp_path, capsys):
    marker = tmp_path / "exploded"
    bomb = tmp_path / "bomb.ckpt"
    torch.save({"global_step": 99, "state_dict": {}, "payload": Bomb(marker)}, bomb)

    assert cli(fit_args("--ckpt_path", str(bomb))) == 2
    error = capsys.readouterr().err
    assert f"error: {bomb}: refused: unpickling it would run posix.system" in error
    with pytest.raises(UnreadableCheckpoint, match="refused"):
        FineTuneModule.load_from_checkpoint(bomb)

    planted = tmp_path / "run/checkpoints/last.ckpt"  # as if dropped into the run dir: passed over, not run
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(bomb.read_bytes())
    with pytest.warns(UserWarning, match="skipping checkpoint .*refused"):
        assert cli(fit_args("--trainer.max_steps", "1")) == 0
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / ".metadata").write_bytes(b"")
    (shards / "meta.pt").write_bytes(bomb.read_bytes())
    assert cli(["consolidate", str(shards), str(tmp_path / "one.ckpt")]) == 2
    assert not marker.exists()


def test_a_checkpoint_of_another_method_rank_or_base_model_is_one_error(cli, fit_args, tmp_path, capsys, data_dir):
    assert cli(fit_args("--model.method", "LoRA", "--model.method.r", "4", run_dir=tmp_path / "lora")) == 0
    checkpoint = str(tmp_path / "lora/checkpoints/last.ckpt")
    texts = [v for line in (data_dir / "train.jsonl").read_text().splitlines() for v in json.loads(line).values()]
    narrow = build_tiny_llama(tmp_path / "narrow", texts, hidden=32, layers=2, vocab_size=300)
    cases = {
        (
            "--model.method.r",
            "8",
        ): "shape torch.Size([4, 64]) from checkpoint, the shape in current model is torch.Size([8",
        ("--model.method", "Full"): "lacks",
        ("--model.model_name_or_path", str(narrow)): "trained on another base model (hidden_size 64 there, 32 here)",
    }
    for flags, message in cases.items():
        capsys.readouterr()
        args = fit_args("--model.method", "LoRA", *flags, "--ckpt_path", checkpoint, run_dir=tmp_path / "other")
        assert cli(args) == 2, flags
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], errors


def test_an_unknown_key_in_a_config_file_names_the_file(cli, fit_args, tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("model:\n  method: LoRA\n  lora_rank: 8\n")
    args = fit_args()
    assert cli([args[0], "--config", str(config), *args[1:]]) == 2
    assert f"error: {config}: unknown key 'model.lora_rank'" in capsys.readouterr().err


def poison(monkeypatch, bad: set[int] | None) -> None:
    """Make the training loss NaN for batches holding any example in `bad` (None: every batch)."""
    loss = FineTuneModule.loss

    def poisoned(self, batch):
        terms = loss(self, batch)
        ids = set(batch["example_ids"].tolist()) if "example_ids" in batch else set()
        return terms._replace(loss=terms.loss * float("nan")) if self.training and (bad is None or ids & bad) else terms

    monkeypatch.setattr(FineTuneModule, "loss", poisoned)


def assert_finite(run_dir: Path) -> None:
    assert all(value.isfinite().all() for value in trained_weights(run_dir).values())


@pytest.mark.parametrize("objective", ["CrossEntropy", "DPO"])
def test_a_nan_batch_is_skipped_and_named_by_its_source_lines(
    cli, fit_args, data_dir, tmp_path, monkeypatch, objective
):
    poison(monkeypatch, {5})
    log = tmp_path / "steps.jsonl"
    data = ["--model.objective", objective]
    if objective == "DPO":  # a batch of pairs, named by the lines of the pairs
        data += ["--data.format", "preference", "--data.train_path", str(data_dir / "pref_train.jsonl")]
        data += ["--data.val_path", str(data_dir / "pref_val.jsonl"), "--generation.num_samples", "0"]
    args = recording(fit_args(*COMMON, *BATCHING["pad"], *data, "--trainer.max_steps", "8"), log)  # one epoch: once
    source = "pref_train" if objective == "DPO" else "train"
    with pytest.warns(
        UserWarning, match=rf"non-finite loss or gradient \(loss nan\) from .*/{source}\.jsonl lines \d+, \d+"
    ) as w:
        assert cli(args) == 0
    assert sum("update skipped" in str(warning.message) for warning in w) == 1
    bad = [row for row in recorded(log) if 5 in row["ids"]]
    assert len(bad) == 1 and bad[0]["loss"] != bad[0]["loss"]  # the NaN step happened, and the run went on
    assert recorded(log)[-1]["step"] == 8
    assert_finite(tmp_path / "run")


def test_a_nan_batch_stops_with_the_last_good_state_when_asked(cli, fit_args, tmp_path, monkeypatch, capsys):
    poison(monkeypatch, {5})
    log = tmp_path / "steps.jsonl"
    args = recording(fit_args(*COMMON, *BATCHING["pad"], "--trainer.max_steps", "8", "--guard.nonfinite", "stop"), log)
    assert cli(args) == 2
    step = next(row["step"] for row in recorded(log) if 5 in row["ids"])
    error = capsys.readouterr().err
    assert f"error: step {step}: non-finite loss or gradient" in error and "train.jsonl line" in error
    assert f"saved the last good state to {tmp_path / 'run/checkpoints/last.ckpt'}" in error
    assert checkpoint_step(tmp_path / "run/checkpoints/last.ckpt") == step
    assert_finite(tmp_path / "run")
    assert json.loads((tmp_path / "run/run.json").read_text())["status"] == "failed"


def test_non_finite_steps_in_a_row_stop_a_diverged_run(cli, fit_args, tmp_path, monkeypatch, capsys):
    poison(monkeypatch, None)
    assert cli(fit_args(*BATCHING["pad"], "--trainer.max_steps", "8")) == 2
    error = capsys.readouterr().err
    assert "error: step 3: non-finite" in error and "3 non-finite steps in a row: the run has diverged" in error
    assert_finite(tmp_path / "run")


def test_out_of_memory_names_the_batch_shape_and_the_knobs(cli, fit_args, monkeypatch, capsys):
    def out_of_memory(self, batch):
        if self.training:  # not in the sanity-check validation before
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original_loss(self, batch)

    original_loss = FineTuneModule.loss

    monkeypatch.setattr(FineTuneModule, "loss", out_of_memory)
    assert cli(fit_args(*BATCHING["pad"])) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "error: out of memory at step 1 on a batch of 4 x " in errors[0], errors
    assert "--data.batch_size" in errors[0] and "--model.gradient_checkpointing true" in errors[0]


def test_a_second_signal_exits_at_once(monkeypatch):
    """The first SIGTERM/SIGINT asks for a checkpoint at the next step; a second one does not wait for it."""
    exits = []
    monkeypatch.setattr(os, "_exit", lambda status: exits.append(status))
    guard = Preemption()
    guard.active = True
    guard._install()
    try:
        signal.raise_signal(signal.SIGTERM)
        assert guard.requested == signal.SIGTERM and not exits
        signal.raise_signal(signal.SIGINT)
        assert exits == [128 + signal.SIGINT]
    finally:
        guard._restore_handlers()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_tokens_in_the_environment_never_land_in_the_run_dir(cli, fit_args, tmp_path, monkeypatch):
    secrets = {"WANDB_API_KEY": "wandb-secret-0123456789", "HF_TOKEN": "hf_secret0123456789"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    assert cli(fit_args("--trainer.logger", "true")) == 0
    written = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert len(written) > 3
    for path in written:
        data = path.read_bytes()
        assert not any(value.encode() in data for value in secrets.values()), path


def test_a_model_shipping_its_own_code_does_not_run_it_unless_trusted(cli, fit_args, tiny_model, tmp_path, capsys):
    marker = tmp_path / "ran"
    custom = tmp_path / "custom"
    custom.mkdir()
    for path in Path(tiny_model).iterdir():
        (custom / path.name).write_bytes(path.read_bytes())
    config = json.loads((custom / "config.json").read_text())
    config |= {"model_type": "custom-llama", "auto_map": {"AutoConfig": "custom.Config"}}
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "custom.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    assert cli(fit_args("--model.model_name_or_path", str(custom))) == 2
    assert (
        "needs its own Python code to load; it runs only with --model.trust_remote_code true" in capsys.readouterr().err
    )
    assert not marker.exists()


class OneProcess:
    """What save_staged needs of a strategy, for one process."""

    global_rank = 0

    def barrier(self, name: str | None = None) -> None:
        pass


def test_a_sharded_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    """FSDP2 and DeepSpeed folders (end to end for FSDP2 in test_scale); here a kill between two shards."""

    def shards(*contents: str, crash: bool = False):
        def save(folder: Path) -> None:
            folder.mkdir()
            for number, content in enumerate(contents):
                if crash and number:
                    raise Crash
                (folder / f"shard{number}").write_text(content)

        return save

    last = tmp_path / "checkpoints/last.ckpt"
    last.parent.mkdir()
    save_staged(OneProcess(), last, shards("old0", "old1"))
    with pytest.raises(Crash):
        save_staged(OneProcess(), last, shards("new0", "new1", crash=True))
    assert [path.read_text() for path in sorted(last.iterdir())] == ["old0", "old1"]
    assert remove_partial_files(last.parent) == [last.parent / ".last.ckpt.partial"]
    save_staged(OneProcess(), last, shards("new0", "new1"))
    assert [path.read_text() for path in sorted(last.iterdir())] == ["new0", "new1"]
    assert sorted(path.name for path in last.parent.iterdir()) == ["last.ckpt"]


def sharded_checkpoints(folder: Path, payload=None) -> dict[str, Path]:
    """A genuine torch.distributed.checkpoint folder (with Lightning's meta.pt) and a DeepSpeed-style one; with a
    payload, one copy of each planted per file kind: `.metadata`, a `.distcp` item, `meta.pt`, DeepSpeed's states."""
    import torch.distributed.checkpoint as dcp

    def dcp_folder(name: str, extra=None) -> Path:
        path = folder / name
        state = {"model": {"w": torch.ones(2, 3)}, "optimizer_0": {"param_groups": [{"lr": 0.1, "params": [0]}]}}
        dcp.save({**state, **({"extra": extra} if extra else {})}, checkpoint_id=path, no_dist=True)
        torch.save({"global_step": 3, "state_dict": {}}, path / "meta.pt")
        return path

    made = {"genuine": dcp_folder("genuine")}
    if payload is not None:
        made[".metadata"] = dcp_folder("metadata")
        import pickle

        (made[".metadata"] / ".metadata").write_bytes(pickle.dumps(payload))
        made[".distcp"] = dcp_folder("distcp", extra=payload)
        made["meta.pt"] = dcp_folder("meta")
        torch.save({"global_step": 3, "payload": payload}, made["meta.pt"] / "meta.pt")
        made["deepspeed"] = folder / "deepspeed"
        (made["deepspeed"] / "checkpoint").mkdir(parents=True)
        (made["deepspeed"] / "latest").write_text("checkpoint")
        torch.save({"module": {}, "payload": payload}, made["deepspeed"] / "checkpoint/mp_rank_00_model_states.pt")
        made["legacy.pt"] = folder / "legacy"
        made["legacy.pt"].mkdir()
        torch.save(
            {"payload": payload},
            made["legacy.pt"] / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            _use_new_zipfile_serialization=False,
        )
    return made


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_every_file_of_a_sharded_checkpoint_is_checked_before_a_library_reads_it(cli, fit_args, tmp_path, capsys):
    marker = tmp_path / "exploded"
    folders = sharded_checkpoints(tmp_path / "shards", Bomb(marker))
    for kind, folder in folders.items():
        if kind == "genuine":
            continue
        assert cli(["consolidate", str(folder), str(tmp_path / f"{folder.name}.ckpt")]) == 2, kind
        assert "refused" in capsys.readouterr().err, kind
        assert cli(fit_args("--ckpt_path", str(folder))) == 2, kind
        assert "refused" in capsys.readouterr().err, kind
        assert not marker.exists(), kind
    genuine = folders["genuine"]  # still loads
    assert cli(["consolidate", str(genuine), str(tmp_path / "one.ckpt")]) == 0
    one = torch.load(tmp_path / "one.ckpt", weights_only=True)
    assert one["global_step"] == 3 and torch.equal(one["state_dict"]["w"], torch.ones(2, 3))
    assert checkpoint_step(genuine) == 3
