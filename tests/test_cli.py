"""`lightning-ft fit` as users run it: shipped recipes, run-dir layout, checkpoints, resume, and bad input."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from lightning_ft import FineTuneModule

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def load_ckpt(run_dir: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)


def test_print_config_round_trips(cli, capsys, tmp_path):
    assert cli(["fit", "--config", str(ROOT / "configs/lora.yaml"), "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"class_path: lightning_ft\S*\.LoRA\n", printed)
    (tmp_path / "printed.yaml").write_text(printed)
    assert cli(["fit", "--config", str(tmp_path / "printed.yaml"), "--print_config"]) == 0
    assert capsys.readouterr().out == printed


RECIPE_RUNS = [(c, "classification" in c.stem) for c in CONFIGS] + [(ROOT / "configs/lora.yaml", True)]


@pytest.mark.parametrize(
    "config,classification",
    RECIPE_RUNS,
    ids=[c.stem + ("-as-classifier" * (k and "classification" not in c.stem)) for c, k in RECIPE_RUNS],
)
def test_every_shipped_config_fits_two_steps(
    cli, fit_args, tiny_model, data_dir, tmp_path, caplog, capsys, config, classification
):
    """Each recipe with the contract flags; lora.yaml also turned into a classifier by flags alone."""
    run_dir = tmp_path / config.stem
    # The recipes' teacher is a hub model; here the tiny model teaches itself (same tokenizer, as it must be).
    extra = ["--model.objective.teacher", str(tiny_model)] if config.stem == "distill" else []
    if config.stem in ("dpo", "orpo", "simpo", "kto"):  # on pairs or feedback: one packed batch a pass, take two
        data = "feedback" if config.stem == "kto" else "pref"
        files = [str(data_dir / f"{data}_train.jsonl"), str(data_dir / f"{data}_val.jsonl")]
        extra = ["--data.train_path", files[0], "--data.val_path", files[1], "--trainer.max_epochs", "2"]
    args = fit_args("--data.num_workers", "0", *extra, run_dir=run_dir, classification=classification)
    caplog.set_level("INFO")
    assert cli(["fit", "--config", str(config), *args[1:]]) == 0
    assert re.search(r"trainable: [\d,]+ / [\d,]+ \(\d+\.\d\d%\)  \w+\(", caplog.text)
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert load_ckpt(run_dir)["global_step"] == 2
    shown = capsys.readouterr().out  # every validation metric, and a classifier's confusion matrix with its labels
    assert re.search(r"validation at step 2: .*val_loss", shown)
    if classification:
        assert "val_accuracy" in shown and re.search(r"true \\ predicted\s*┃ neg\s*┃ pos", shown)


def test_lora_checkpoint_holds_only_the_adapter(cli, fit_args, tmp_path, tiny_model):
    lora, full = tmp_path / "lora", tmp_path / "full"
    assert (
        cli(
            fit_args(
                "--model.method",
                "LoRA",
                "--model.method.r",
                "4",
                "--model.method.target_modules",
                "[q_proj,v_proj]",
                run_dir=lora,
            )
        )
        == 0
    )
    assert cli(fit_args("--model.method", "Full", run_dir=full)) == 0
    lora_bytes = (lora / "checkpoints/last.ckpt").stat().st_size
    full_bytes = (full / "checkpoints/last.ckpt").stat().st_size
    assert lora_bytes < 0.05 * full_bytes, (lora_bytes, full_bytes)
    checkpoint = load_ckpt(lora)
    assert checkpoint["state_dict"] and all("lora_" in k for k in checkpoint["state_dict"])
    full_state = load_ckpt(full)["state_dict"]
    assert len(full_state) == len(FineTuneModule.load_from_checkpoint(full / "checkpoints/last.ckpt").state_dict())

    # Loading it back onto the base restores exactly the trained adapter.
    restored = FineTuneModule.load_from_checkpoint(lora / "checkpoints/last.ckpt")
    state = restored.state_dict()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(state[key], value)
    assert repr(restored.method).startswith("LoRA(r=4")


def test_qlora_resumes(cli, fit_args, tmp_path):
    run_dir = tmp_path / "qlora"
    method = ("--model.method", "QLoRA", "--model.method.compute_dtype", "float32")
    assert cli(fit_args(*method, run_dir=run_dir)) == 0
    assert cli(fit_args(*method, "--trainer.max_steps", "4", "--ckpt_path", "last", run_dir=run_dir)) == 0
    assert load_ckpt(run_dir)["global_step"] == 4


def test_a_rerun_continues_from_the_newest_checkpoint_and_null_refuses(cli, fit_args, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli(fit_args("--model.method", "LoRA", run_dir=run_dir)) == 0
    assert cli(fit_args("--model.method", "LoRA", "--ckpt_path", "null", run_dir=run_dir)) == 2
    assert f"--ckpt_path null starts afresh, but {run_dir} holds" in capsys.readouterr().err
    assert cli(fit_args("--model.method", "LoRA", "--trainer.max_steps", "4", run_dir=run_dir)) == 0  # auto
    assert load_ckpt(run_dir)["global_step"] == 4
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.parametrize(
    "flags,message",
    [
        (
            ["--model.model_name_or_path", "/no/such/model"],
            "--model.model_name_or_path: no such directory: /no/such/model",
        ),
        (["--model.method", "Nope"], "--model.method: unknown method 'Nope' (choose from Full, LoRA, QLoRA"),
        (
            ["--model.method", "LoRA", "--model.method.target_modules", "[wq,wv]"],
            "target_modules ['wq', 'wv'] match no layer",
        ),
        (["--data.train_path", "/no/such/train.jsonl"], "--data.train_path /no/such/train.jsonl: no such file"),
        (
            ["--data.format", "chatml"],
            "--data.format: unknown format 'chatml' (choose from text, instruction, chat, classification, preference, unpaired)",
        ),
        (["--model.optim.lr", "fast"], "--model.optim.lr: expected a number, got 'fast'"),
        (["--model.optim.lr=-1e-3"], "--model.optim.lr must be >= 0, got -0.001"),
        (["--model.method", "LoRA", "--model.method.r", "0"], "--model.method.r must be positive, got 0"),
        (["--trainer.default_root_dir", "/sys/run"], "cannot write /sys/run: Operation not permitted"),
        (["--model.method", "LoRA", "--model.method.r", "x"], "--model.method.r: expected a whole number, got 'x'"),
        (["--model.method", "LoRA", "--model.method.rank", "4"], "LoRA has no option 'rank' (its options: r, alpha"),
        (["--model.method.rank", "4"], "--model.method.rank: no method chosen to take it; give one first (choose"),
        (["--data.format.input_field", "x"], "give the format as a class first, e.g. --data.format Instruction"),
        (["--model.model_name_or_path", "/tmp"], "--model.model_name_or_path: /tmp holds no model (no config.json)"),
    ],
    ids=[
        *("model-path", "method", "target-modules", "data-file", "format", "bad-value", "lr", "rank", "read-only"),
        *("method-value", "method-option", "method-missing", "format-option", "not-a-model"),
    ],
)
def test_bad_input_is_one_error_line(cli, fit_args, capsys, flags, message):
    assert cli(fit_args(*flags)) == (1 if "cannot write" in message else 2)  # 1: not a mistake in the command
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors


def test_bad_records_name_file_and_line(cli, fit_args, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c"}) + "\n")
    assert cli(fit_args("--data.train_path", str(bad), "--data.quality.drop_empty", "false")) == 2
    assert f"error: {bad}:2: field 'output' is missing (fields there: instruction)" in capsys.readouterr().err


def test_format_and_task_must_agree(cli, fit_args, capsys):
    assert cli(fit_args("--data.format", "classification")) == 2
    assert "needs --model.task sequence_classification" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "--model", "/no/model", "--tasks", "mmlu-pro", "--data_dir", "/"], "unknown task 'mmlu-pro'"),
        (["human-eval", "report", "--key", "/no/key.json", "/no/sheet.csv"], "/no/key.json"),
        (
            ["cv", "--folds", "1"],
            "--model.model_name_or_path is required: give it on the command line or in a --config",
        ),
        (["data", "--output"], "argument --output: expected one argument (see lightning-ft data --help)"),
    ],
    ids=["eval", "human-eval", "cv", "data"],
)
def test_other_commands_report_mistakes_in_one_line(cli, capsys, argv, message):
    assert cli(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors


def test_console_script_exit_status_and_message(tmp_path):
    """The installed entry point: no traceback wall, one `error:` line, non-zero status; --help works."""
    lightning_ft = Path(sys.executable).with_name("lightning-ft")
    result = subprocess.run(
        [str(lightning_ft), "fit", "--model.model_name_or_path", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --model.model_name_or_path: no such directory")
    module_help = subprocess.run(
        [sys.executable, "-m", "lightning_ft", "fit", "--help"], capture_output=True, text=True, check=False
    )
    assert module_help.returncode == 0 and "--model.method" in module_help.stdout


def test_a_full_disk_is_one_line_and_keeps_what_was_written(cli, fit_args, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert cli(fit_args()) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(r"error: cannot write \S+/checkpoints/\S+\.ckpt: No space left", errors[0])
    assert (tmp_path / "run/config.yaml").read_text().startswith("seed_everything:")
    assert list((tmp_path / "run/checkpoints").iterdir()) == []  # no partial file left behind


def test_a_classifier_checkpoint_does_not_resume_a_causal_lm(cli, fit_args, tmp_path, capsys):
    assert cli(fit_args(run_dir=tmp_path / "classifier", classification=True)) == 0
    ckpt = tmp_path / "classifier/checkpoints/last.ckpt"
    assert cli(fit_args("--ckpt_path", str(ckpt))) == 2
    assert (
        "error: the checkpoint is a sequence_classification model; this run trains --model.task causal_lm"
        in capsys.readouterr().err
    )


def test_a_validation_split_carved_from_train_picks_the_best_checkpoint(cli, fit_args, tmp_path):
    """No val file, but --data.split.val_fraction: the run validates, so "best" is the lowest val_loss."""
    assert cli(fit_args("--data.val_path", "null", "--data.split.val_fraction", "0.25")) == 0
    selection = json.loads((tmp_path / "run/checkpoints/selection.json").read_text())
    assert selection["monitor"] == "val_loss" and selection["best_model_score"] is not None
    assert selection["restored_best"]


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        (
            "model:\n  method:\n    class_path: LoRA\n    init_args:\n      rank: 4\n",
            "model.method.init_args: LoRA has no option 'rank'",
        ),
        ("model:\n  method: [LoRA\n  x: 1\n", ":3:4: not valid YAML (expected ',' or ']', but got ':')"),
        (
            "model:\n  method:\n    class_path: NoSuchMethod\n",
            "model.method: unknown method 'NoSuchMethod' (choose from Full,",
        ),
    ],
    ids=["unknown-option", "syntax", "unknown-class"],
)
def test_a_mistake_in_a_config_file_names_the_file(cli, fit_args, tmp_path, capsys, yaml_text, message):
    config = tmp_path / "mine.yaml"
    config.write_text(yaml_text)
    assert cli([*fit_args(), "--config", str(config)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {config}") and message in errors[0], errors


def test_run_files_get_the_permissions_open_would_give(tmp_path):
    """write_atomically goes through mkstemp, whose 0600 would hide config.yaml and run.json from the team."""
    from lightning_ft.files import write_json_atomically

    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    write_json_atomically(tmp_path / "atomic.json", {})
    assert (tmp_path / "atomic.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_a_max_length_beyond_the_models_context_is_warned_about(cli, fit_args, tiny_model):
    """The recipes' 1024 on a model of 512 positions (the README's commands on the demo model showed it)."""
    context = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    with pytest.warns(UserWarning, match=rf"--data.max_length {2 * context} is longer than the model's context"):
        assert cli(fit_args("--data.max_length", str(2 * context), "--trainer.max_steps", "1")) == 0
