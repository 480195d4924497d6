"""`lightning-ft sweep`: one fit per grid combination, all checked first, then the comparison."""

from __future__ import annotations

import json

import pytest
import yaml

from lightning_ft.errors import UserError
from lightning_ft.tracking.sweep import trials


def test_a_method_grid_fits_each_method_and_compares_them(cli, fit_args, tmp_path, capsys):
    args = fit_args("--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0")[1:]
    assert cli(["sweep", *args, "--grid", "model.method=[Full, LoRA]"]) == 0
    out = capsys.readouterr().out
    records = {
        name: json.loads((tmp_path / "run" / name / "run.json").read_text()) for name in ("method=Full", "method=LoRA")
    }
    assert {name: r["status"] for name, r in records.items()} == {
        "method=Full": "completed",
        "method=LoRA": "completed",
    }
    assert records["method=LoRA"]["parameters"]["trainable_percent"] < 100
    assert "checkpoint MB" in out and (tmp_path / "run/sweep.html").is_file()
    sizes = {name: (tmp_path / "run" / name / "checkpoints/last.ckpt").stat().st_size for name in records}
    assert sizes["method=LoRA"] < sizes["method=Full"] / 2  # the adapter, not the model


def test_grids_combine_in_order():
    plan = trials(["model.method.init_args.r=[4, 8]", "model.optim.lr=[1e-4, 3e-4]"])
    assert [t.name for t in plan] == ["r=4_lr=1e-4", "r=4_lr=3e-4", "r=8_lr=1e-4", "r=8_lr=3e-4"]
    assert plan[1].flags == ["--model.method.init_args.r", "4", "--model.optim.lr", "3e-4"]


@pytest.mark.parametrize(
    "grid,message",
    [
        ("model.method.init_args.r=4", "write KEY=[VALUE, ...]"),
        ("model.method.init_args.r=[]", "no values"),
        ("model.method.init_args.r=[4, 4]", "a value is repeated"),
    ],
)
def test_bad_grids_are_one_line(grid, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
        trials([grid])


def test_a_bad_key_fails_before_anything_trains(cli, fit_args, tmp_path, capsys):
    args = fit_args()[1:]
    assert cli(["sweep", *args, "--grid", "model.optim.lrr=[1, 2]"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: sweep lrr=1:") and "lrr" in error[0]
    assert not (tmp_path / "run").exists()


def test_a_slurm_sweep_writes_one_job_per_combination(cli, fit_args, tmp_path, capsys):
    args = fit_args("--trainer.devices", "auto")[1:]
    assert cli(["sweep", *args, "--grid", "model.optim.lr=[1e-4, 1e-3]", "--slurm", "--dry-run"]) == 0
    scripts = sorted(tmp_path.glob("run/*/slurm/*/job.sbatch"))
    assert [script.parts[-4] for script in scripts] == ["lr=1e-3", "lr=1e-4"]
    frozen = [yaml.safe_load((script.parent / "config.yaml").read_text()) for script in scripts]
    assert [config["model"]["optim"]["lr"] for config in frozen] == [1e-3, 1e-4]


def test_a_grid_over_an_objectives_setting_freezes_one_config_each(cli, fit_args, data_dir, tmp_path):
    pairs = ["--data.format", "preference", "--data.train_path", str(data_dir / "pref_train.jsonl")]
    args = fit_args("--trainer.devices", "auto", "--model.objective", "DPO", *pairs)[1:]
    assert cli(["sweep", *args, "--grid", "model.objective.beta=[0.05, 0.3]", "--slurm", "--dry-run"]) == 0
    scripts = sorted(tmp_path.glob("run/*/slurm/*/job.sbatch"))
    frozen = [yaml.safe_load((script.parent / "config.yaml").read_text()) for script in scripts]
    assert [config["model"]["objective"]["init_args"]["beta"] for config in frozen] == [0.05, 0.3]
    assert {config["model"]["objective"]["class_path"] for config in frozen} == {"lightning_ft.objectives.DPO"}
