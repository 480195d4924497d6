"""Lightning's Tuner from the CLI: the learning-rate range test and the batch-size finder."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread


def test_lr_find_suggests_a_rate_and_saves_the_curve_without_touching_the_run(cli, fit_args, tmp_path, capsys):
    args = fit_args("--model.method", "LoRA", "--data.batch_size", "4", "--trainer.max_steps", "100")[1:]
    assert cli(["lr-find", *args, "--num_training", "20", "--min_lr", "1e-5", "--max_lr", "1"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("suggested learning rate"))
    suggestion = float(line.split()[3])
    assert 1e-5 <= suggestion <= 1
    assert np.var(imread(tmp_path / "run/lr_find.png")[..., :3]) > 1e-3
    assert not (tmp_path / "run/checkpoints").exists() and not (tmp_path / "run/run.json").exists()


def test_batch_size_find_doubles_until_the_trials_run_out(cli, fit_args, capsys):
    args = fit_args("--model.method", "LoRA", "--data.batch_size", "2", "--data.batching", "pad")[1:]
    assert cli(["batch-size-find", *args, "--max_trials", "3", "--steps_per_trial", "1"]) == 0
    assert "largest batch size that fitted: 8 (started at 2; --data.batch_size 8)" in capsys.readouterr().out


def test_tuner_flags_are_checked(cli, fit_args, capsys):
    assert cli(["lr-find", *fit_args()[1:], "--num_training", "many"]) == 2
    assert "error: --num_training: expected a whole number, got 'many'" in capsys.readouterr().err
