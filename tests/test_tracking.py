"""The run record run.json: complete and schema-valid when a run completes, honest when it fails or is killed."""

from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import ROOT
from lightning.pytorch import Callback

from lightning_ft.tracking.compare import load_run
from lightning_ft.tracking.record import SCHEMA, redact


def validate(record: dict) -> None:
    jsonschema.validate(record, json.loads(SCHEMA.read_text()), format_checker=jsonschema.FormatChecker())


class FailAtStep2(Callback):
    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 2:
            raise RuntimeError("boom at step 2")


def test_a_completed_run_leaves_a_complete_valid_record(cli, fit_args, tmp_path):
    args = fit_args("--data.batching", "pad", "--data.batch_size", "4", "--trainer.max_epochs", "1")
    assert cli([*args, "--trainer.max_steps", "-1"]) == 0
    record = json.loads((tmp_path / "run/run.json").read_text())
    validate(record)
    assert record["status"] == "completed" and record["error"] is None
    assert record["method"]["name"] == "Full" and record["parameters"]["trainable_percent"] == 100
    assert record["config"]["data"]["batch_size"] == 4 and record["seed"] == 42
    assert record["progress"]["global_step"] == 8  # 32 examples / 4
    assert record["throughput"]["samples"] == 32
    assert record["throughput"]["tokens"] == record_tokens(record)  # every real token of one epoch, no padding
    assert record["throughput"]["tokens_per_s"] > 0 and record["memory"]["peak_rss_mb"] > 0
    assert record["checkpoints"]["last"].endswith("checkpoints/last.ckpt")
    assert record["metrics"]["best"]["val_loss"] == pytest.approx(record["metrics"]["final"]["val_loss"], rel=0.5)
    assert record["data"]["examples"] == {"train": 32, "val": 8} and len(record["data"]["fingerprint"]) == 24


def record_tokens(record: dict) -> int:
    """The training set's token count, from the data files the record names (the tiny tokenizer, re-encoded)."""
    from lightning_ft import FineTuneDataModule

    datamodule = FineTuneDataModule("instruction", record["data"]["files"]["train"], tokenizer=record["model"])
    datamodule.setup("fit")
    return sum(len(ids) for ids in datamodule.datasets["train"]["input_ids"])


def test_a_run_that_raises_reads_failed_with_the_error(cli, fit_args, tmp_path):
    with pytest.raises(RuntimeError, match="boom at step 2"):
        cli(fit_args("--trainer.max_steps", "5", "--trainer.callbacks+=test_tracking.FailAtStep2"))
    record = json.loads((tmp_path / "run/run.json").read_text())
    validate(record)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom at step 2"
    assert record["progress"]["global_step"] == 2


def test_secrets_never_reach_the_record():
    config = {"trainer": {"logger": {"init_args": {"api_key": "abc", "project": "p"}}}, "hub_token": "hf_x"}
    config["generation"] = {"max_new_tokens": 8, "pad_token": "<pad>", "password": "pw"}
    assert redact(config) == {
        "trainer": {"logger": {"init_args": {"api_key": "<redacted>", "project": "p"}}},
        "hub_token": "<redacted>",
        "generation": {"max_new_tokens": 8, "pad_token": "<pad>", "password": "<redacted>"},
    }


def test_without_a_terminal_progress_is_plain_lines_with_loss_lr_tokens_and_eta(cli, fit_args, capsys):
    assert cli(fit_args("--trainer.max_steps", "10", "--trainer.enable_progress_bar", "true")) == 0
    out = capsys.readouterr().out
    assert "\r" not in out
    line = next(line for line in out.splitlines() if "step 10/10" in line)
    for field in ("train_loss ", "lr ", "tok/s ", "ETA 0:00:00"):
        assert field in line, line


def test_logging_presets_write_into_the_run_dir_and_wandb_goes_offline_without_a_key(
    cli, fit_args, tmp_path, monkeypatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no W&B key configured
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in (
        "wandb",
        "tensorboard",
        "csv",
    ):  # after fit_args' `--trainer.logger false`, so the preset's logger wins
        preset = ["--config", str(ROOT / f"configs/logging/{name}.yaml"), "--trainer.log_every_n_steps", "1"]
        assert cli(fit_args(*preset, "--trainer.max_steps", "4", run_dir=tmp_path / name)) == 0
    assert list((tmp_path / "wandb/wandb").glob("offline-run-*")) and (tmp_path / "wandb/wandb_run_id").is_file()
    curves = load_run(tmp_path / "tensorboard").curves  # compare reads TensorBoard's event files
    # the console's step numbers (Lightning logs a step under the count before it; compare shifts it back)
    assert [step for step, _ in curves["train_loss"]] == [1, 2, 3, 4]
    assert list((tmp_path / "csv").glob("lightning_logs/version_0/metrics.csv"))


def test_the_saved_config_reproduces_the_run(cli, fit_args, tmp_path):
    assert cli(fit_args()) == 0
    again = [
        "fit",
        "--config",
        str(tmp_path / "run/config.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path / "again"),
    ]
    assert cli(again) == 0
    first, second = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("run", "again"))
    assert second["metrics"]["final"]["train_loss"] == first["metrics"]["final"]["train_loss"]


def test_tokens_seen_carry_over_a_resume(cli, fit_args, tmp_path):
    assert cli(fit_args("--trainer.max_steps", "8", run_dir=tmp_path / "alone")) == 0
    assert cli(fit_args("--trainer.max_steps", "4", run_dir=tmp_path / "resumed")) == 0
    first_start = json.loads((tmp_path / "resumed/run.json").read_text())["started_at"]
    assert cli(fit_args("--trainer.max_steps", "8", "--ckpt_path", "last", run_dir=tmp_path / "resumed")) == 0
    alone, resumed = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("alone", "resumed"))
    assert resumed["starts"] == 2 and resumed["started_at"] == first_start
    for key in ("tokens", "samples"):
        assert resumed["throughput"][key] == alone["throughput"][key] > 0


def test_a_sigkilled_run_reads_died_and_a_rerun_takes_over_its_lock(cli, fit_args, tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    args = fit_args("--trainer.max_steps", "400", "--checkpoint.every_n_train_steps", "2")
    with (tmp_path / "fit.out").open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "lightning_ft", *args], stdout=out, stderr=out)
    deadline = time.monotonic() + 240
    while (read_run_record_or_none(run_dir) or {}).get("progress", {}).get("global_step", 0) < 4:
        assert process.poll() is None, (tmp_path / "fit.out").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 4"
        time.sleep(0.05)
    assert cli(["compare", str(run_dir)]) == 0
    assert "running" in capsys.readouterr().out  # alive: still running
    process.send_signal(signal.SIGKILL)
    process.wait()

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "running" and (run_dir / "fit.lock").exists()  # nothing could update them
    step = record["progress"]["global_step"]
    assert cli(["compare", str(run_dir)]) == 0
    assert f"died at step {step}" in capsys.readouterr().out.replace("\n", " ").replace("│", " ").replace("  ", " ")
    assert cli(fit_args("--trainer.max_steps", str(step + 1))) == 0  # the dead run's lock is taken over
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    assert not (run_dir / "fit.lock").exists()


def read_run_record_or_none(run_dir):
    from lightning_ft.tracking.record import UnreadableRecord, read_run_record

    try:
        return read_run_record(run_dir)
    except UnreadableRecord:
        return None


def test_another_hosts_run_is_died_when_its_heartbeat_is_old():
    from lightning_ft.tracking.record import current_status, now

    process = {"host": "elsewhere", "pid": 1, "started": 0.0}
    record = {"status": "running", "process": process, "heartbeat_every_s": 30, "progress": {"global_step": 7}}
    assert current_status({**record, "heartbeat_at": now()}) == "running"
    assert current_status({**record, "heartbeat_at": "2020-01-01T00:00:00+00:00"}) == "died"
    assert current_status({**record, "status": "completed", "heartbeat_at": "2020-01-01T00:00:00+00:00"}) == "completed"


def test_a_second_fit_into_a_locked_run_dir_refuses_naming_the_holder(cli, fit_args, tmp_path, capsys):
    import os

    from lightning_ft.tracking.run_lock import run_dir_lock

    with run_dir_lock(tmp_path / "run"):
        assert cli(fit_args("--trainer.max_steps", "1")) == 2
    error = capsys.readouterr().err
    assert f"is in use by the fit of pid {os.getpid()}" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run/checkpoints").exists()  # refused before anything was written
    assert cli(fit_args("--trainer.max_steps", "1")) == 0  # released: the next fit runs
