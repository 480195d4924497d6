"""`lightning-ft compare` on three real tiny fits logged to CSV and W&B (offline): values, keys, order, plots, report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from lightning_ft.tracking.compare import fitted_limits, load_run, read_wandb_offline, rows, sort_runs

METHODS = {
    "lora_r4": ["LoRA", "--model.method.r", "4"],
    "lora_r16": ["LoRA", "--model.method.r", "16"],
    "full": ["Full"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, data_dir):
    """Three fits of 6 steps with validation every 2, into runs/<name>; CSV and W&B offline loggers."""
    import os

    from lightning_ft.commands import main

    root = tmp_path_factory.mktemp("runs")
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    for name, method in METHODS.items():
        run = root / name
        loggers = {
            "trainer": {
                "logger": [
                    {"class_path": "CSVLogger", "init_args": {"save_dir": str(run)}},
                    {"class_path": "WandbLogger", "init_args": {"save_dir": str(run), "offline": True, "project": "t"}},
                ]
            }
        }
        run.mkdir()
        (run / "loggers.yaml").write_text(yaml.safe_dump(loggers))
        args = ["fit", "--config", str(run / "loggers.yaml"), "--model.model_name_or_path", str(tiny_model)]
        args += ["--data.train_path", str(data_dir / "train.jsonl"), "--data.val_path", str(data_dir / "val.jsonl")]
        args += ["--trainer.default_root_dir", str(run), "--trainer.max_steps", "6", "--trainer.accelerator", "cpu"]
        args += ["--data.batch_size", "8", "--data.batching", "pad", "--trainer.val_check_interval", "2"]
        args += [
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--model.method",
            *method,
        ]
        assert main(args) == 0
    (root / "empty").mkdir()  # a dir without a run record
    return root


def csv_column(run_dir, name: str) -> list[float]:
    with next(run_dir.glob("lightning_logs/*/metrics.csv")).open() as handle:
        return [float(row[name]) for row in csv.DictReader(handle) if row.get(name)]


def test_compare_shows_real_values_only_differing_keys_best_first(runs):
    loaded = sort_runs([load_run(path) for path in sorted(runs.iterdir())], "val_loss")
    assert [run.name for run in loaded][-1] == "empty" and loaded[-1].status == "no run record"
    trained = loaded[:-1]
    best = [min(csv_column(runs / run.name, "val_loss")) for run in trained]
    assert [run.metric("val_loss") for run in trained] == pytest.approx(best)  # the record's best = the CSV's
    assert best == sorted(best)  # best first
    for run in trained:
        assert run.curves["train_loss"][-1][1] == pytest.approx(csv_column(runs / run.name, "train_loss")[-1])
    columns, table = rows(loaded, "val_loss")
    config_keys = columns[8:]
    assert config_keys and all(key.startswith("model.method") for key in config_keys), config_keys
    row = {r[0]: dict(zip(columns, r, strict=True)) for r in table}
    assert row["lora_r16"]["model.method.init_args.r"] == "16" and row["full"]["method"] == "Full"
    assert row["full"]["trainable %"] == "100.00" and row["empty"]["status"] == "no run record"


def test_compare_writes_a_report_with_non_blank_plots(runs, cli, tmp_path, capsys):
    report = tmp_path / "report.html"
    assert cli(["compare", str(runs / "*"), "--output", str(report)]) == 0
    assert "lora_r16" in capsys.readouterr().out
    text = report.read_text()
    for png in ("report_loss.png", "report_metric.png"):
        assert f'src="{png}"' in text
        assert np.var(imread(tmp_path / png)[..., :3]) > 1e-3  # not a blank canvas
    assert cli(["compare", str(runs / "*"), "--output", str(tmp_path / "report.md")]) == 0
    assert "![report_loss](report_loss.png)" in (tmp_path / "report.md").read_text()


def test_the_wandb_offline_run_holds_config_and_metrics(runs):
    offline = next((runs / "lora_r4" / "wandb").glob("offline-run-*"))
    curves, summary = read_wandb_offline(offline)
    assert curves["val_loss"][-1][1] == pytest.approx(csv_column(runs / "lora_r4", "val_loss")[-1])
    assert summary["config"]["model_name_or_path"] == json.loads((runs / "lora_r4/run.json").read_text())["model"]
    bare = load_run(offline)  # a W&B offline dir alone, without run.json, compares too
    assert bare.metric("val_loss") == pytest.approx(curves["val_loss"][-1][1])


def test_compare_refuses_a_path_that_is_not_there_in_one_line(cli, tmp_path, capsys):
    assert cli(["compare", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: compare: not a directory: {tmp_path / 'nope'}"


def test_val_points_sit_at_the_step_the_console_names(runs):
    """Validation every 2 of 6 steps: the console says "validation at step 2, 4, 6"; so do the curves."""
    curves = load_run(runs / "lora_r4").curves
    assert [step for step, _ in curves["val_loss"]] == [2, 4, 6]
    assert [step for step, _ in curves["train_loss"]] == [1, 2, 3, 4, 5, 6]


def test_the_bar_axis_is_fitted_to_the_values():
    low, high = fitted_limits([2.31, 2.35])
    assert 2.2 < low < 2.31 and 2.35 < high < 2.4  # not from 0, where 2.31 and 2.35 look the same
    assert fitted_limits([5.0]) == pytest.approx((4.75, 5.25))


def test_the_table_stays_within_the_terminal(runs, cli, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert cli(["compare", str(runs / "*")]) == 0
    out = capsys.readouterr().out
    assert "lora_r16" in out and max(len(line) for line in out.splitlines()) <= 100


def test_a_malformed_or_binary_run_json_is_a_warning_naming_it(runs, cli, tmp_path, capsys):
    for name, content in (("binary", b"\x80\x04\xff\xfe"), ("cut", b'{"status": "runn')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_bytes(content)
    assert cli(["compare", str(tmp_path / "binary"), str(tmp_path / "cut"), str(runs / "lora_r4")]) == 0
    captured = capsys.readouterr()
    for name in ("binary", "cut"):
        assert f"warning: {tmp_path / name / 'run.json'}: not a readable run record" in captured.err
    assert "Traceback" not in captured.err and "unreadable run.json" in captured.out and "lora_r4" in captured.out
