"""Scale-out correctness on CPU: the loss is the token-weighted mean over the global batch, whatever the split."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, WORDS, run_in_processes, write_jsonl
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.strategies import Strategy

from lightning_ft.distributed import all_gather_objects
from lightning_ft.distributed.presets import fit_method_to_strategy
from lightning_ft.errors import UserError


def varied_rows(n: int) -> list[dict]:
    """Instructions whose answers run from 1 to 12 words: a mean of per-batch means would weigh them wrongly."""
    rng = random.Random(3)
    return [{"instruction": "Say words.", "output": " ".join(rng.choices(WORDS, k=1 + i % 12))} for i in range(n)]


STEP_GRADIENTS = ROOT / "tests/scripts/step_gradients.py"


def test_all_gather_objects_returns_every_processs_object_by_rank(tmp_path):
    """The one object gather (RNG states in checkpoints, StepGuard's example ids): alone, and over two processes."""
    assert all_gather_objects({"ids": [3]}) == [{"ids": [3]}]
    run_in_processes(ROOT / "tests/scripts/gather_objects.py", tmp_path / "store")


def load_script(path: Path):
    """A tests/scripts file as a module, without running its `__main__` part."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_gradients(tiny_model, train, tmp_path, batch_size: int, accumulate: int, devices: int) -> dict:
    """One process steps in pytest's process; more leave it, since Lightning's DDP launcher re-runs a script."""
    out = tmp_path / f"grads_{batch_size}_{accumulate}_{devices}.pt"
    args = (tiny_model, train, batch_size, accumulate, devices, out, tmp_path / "cache")
    if devices == 1:
        load_script(STEP_GRADIENTS).step_gradients(*args)
    else:
        run_in_processes(STEP_GRADIENTS, *args)
    return torch.load(out)


def test_one_step_is_the_same_however_the_global_batch_is_split(tiny_model, tmp_path, monkeypatch):
    """1 x 4; 1 x 1 x accumulate 4; 2 DDP x 2; 2 DDP x 1 x accumulate 2: the same gradients."""
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # seed_everything sets them in this process: restore after
        monkeypatch.setenv(name, os.environ.get(name, "0"))
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(16))
    reference = step_gradients(tiny_model, train, tmp_path, 4, 1, 1)
    assert reference
    for batch_size, accumulate, devices in [(1, 4, 1), (2, 1, 2), (1, 2, 2)]:
        grads = step_gradients(tiny_model, train, tmp_path, batch_size, accumulate, devices)
        assert grads.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(grads[name], value, atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


# FSDP2 saves one file or a folder of shards (torch.distributed.checkpoint): the LoRA run resumes from one file and
# ends with shards (then consolidated), the full one the other way round, so each save mode is resumed from once.
# DDP is checked with LoRA only: test_preemption's two-process run saves and resumes a DDP full fine-tune.
SHARDED = {("fsdp2", "LoRA"): (False, True), ("fsdp2", "Full"): (True, False)}


@pytest.fixture(scope="module")
def alone_runs() -> dict[tuple[str, str | None], Path]:
    """One-process reference runs, by method and objective: they use no strategy, so the DDP and FSDP2 cases share
    them."""
    return {}


@pytest.mark.parametrize(
    "strategy,method,objective",
    # DPO's runs cover LoRA's too (same method, sharding and resume, plus the reference): one case per pair.
    [("ddp", "LoRA", "DPO"), ("fsdp2", "LoRA", "DPO"), ("fsdp2", "Full", None)],
)
def test_two_processes_fit_save_resume_like_one(
    cli, fit_args, data_dir, tmp_path, tmp_path_factory, alone_runs, strategy, method, objective
):
    """2 CPU processes x batch 2, stopped after 4 steps and resumed to 8 == 1 process x batch 4 for 8 steps, under
    DDP and FSDP2; DPO's loss is a mean over a step's pairs, its reference the adapters-off pass in each process
    (under FSDP2: precomputed through the sharded blocks, by each process, and read back on resume)."""
    # A constant schedule: the interrupted run's first half has max_steps 4, and a cosine would end there.
    common = [
        "--model.method",
        method,
        "--trainer.max_steps",
        "8",
        "--trainer.num_sanity_val_steps",
        "0",
        "--model.optim.scheduler",
        "constant",
        "--data.batching",
        "pad",  # 32 examples, 4 a step: the resume at step 4 is mid-epoch
        "--trainer.precision",
        "32-true",  # bf16 rounding would differ with how the batch is split, beyond the tolerance of fp32 sums
    ]
    if method == "LoRA":
        common += ["--model.method.dropout", "0.0"]  # dropout masks would differ with the number of processes
    if objective:
        pairs = [str(data_dir / "pref_train.jsonl"), str(data_dir / "pref_val.jsonl")]
        common += ["--model.objective", objective, "--data.format", "preference", "--generation.num_samples", "0"]
        common += ["--data.train_path", pairs[0], "--data.val_path", pairs[1], "--model.optim.lr", "1e-2"]
    if (method, objective) not in alone_runs:
        run_dir = tmp_path_factory.mktemp(f"alone-{method}-{objective}")
        assert cli(fit_args(*common, "--data.batch_size", "4", run_dir=run_dir)) == 0
        alone_runs[method, objective] = run_dir
    alone = alone_runs[method, objective]

    shared = tmp_path / strategy
    preset = ["--config", str(ROOT / f"configs/strategy/{strategy}.yaml")]
    if objective and strategy == "fsdp2":  # the reference precomputed through the sharded blocks, then read back
        common += ["--model.objective.reference", "precomputed", "--data.cache_dir", str(tmp_path / "cache")]
    halves = (["--trainer.max_steps", "4"], ["--ckpt_path", "last"])  # stop after 4, then resume to 8
    for extra, sharded in zip(halves, SHARDED.get((strategy, method), (False, False)), strict=True):
        extra += ["--trainer.strategy.init_args.save_distributed_checkpoint", "true"] if sharded else []
        args = fit_args(*common, "--trainer.devices", "2", "--data.batch_size", "2", *extra, run_dir=shared)
        run_in_processes("-m", "lightning_ft", "fit", *preset, *args[1:])
    if objective and strategy == "fsdp2":
        assert len(list((tmp_path / "cache").glob("*/reference/*.pt"))) == 1
    last = shared / "checkpoints/last.ckpt"
    if last.is_dir():
        assert (last / ".metadata").is_file()
        assert cli(["consolidate", str(last), str(tmp_path / "consolidated.ckpt")]) == 0
        last = tmp_path / "consolidated.ckpt"
    expected = torch.load(alone / "checkpoints/last.ckpt", weights_only=False)
    result = torch.load(last, weights_only=False)
    assert result["global_step"] == expected["global_step"] == 8
    assert result["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(result["state_dict"][key], value, atol=2e-5, rtol=1e-4)


PRESETS = {
    "ddp": "DDPStrategy",
    "fsdp": "FSDPStrategy",
    "fsdp2": "FSDP2Strategy",
    "deepspeed_zero2": "DeepSpeedStrategy",
    "deepspeed_zero3": "DeepSpeedStrategy",
    "deepspeed_zero3_offload": "DeepSpeedStrategy",
}


@pytest.mark.parametrize("preset,expected", PRESETS.items(), ids=PRESETS.keys())
def test_strategy_presets_compose_with_a_recipe_and_instantiate(cli, capsys, preset, expected):
    path = ROOT / f"configs/strategy/{preset}.yaml"
    assert cli(["fit", "--config", str(ROOT / "configs/lora.yaml"), "--config", str(path), "--print_config"]) == 0
    printed = capsys.readouterr().out.splitlines()
    config = yaml.safe_load("\n".join(line for line in printed if not line.startswith("[")))  # DeepSpeed's log lines
    assert config["trainer"]["strategy"]["class_path"].endswith(expected)
    assert config["model"]["method"]["class_path"].endswith("LoRA")  # the recipe is intact
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": config["trainer"]["strategy"]})).strategy
    assert type(strategy).__name__ == expected
    if preset.startswith("deepspeed"):
        assert strategy.exclude_frozen_parameters


@pytest.mark.parametrize("preset", ["fsdp", "deepspeed_zero3"])
def test_gpu_only_presets_refuse_cpu_in_one_line(cli, fit_args, capsys, preset):
    args = fit_args("--trainer.devices", "2")
    assert cli(["fit", "--config", str(ROOT / f"configs/strategy/{preset}.yaml"), *args[1:]]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "needs CUDA GPUs" in errors[0], errors


def test_dpo_with_full_fine_tuning_under_fsdp2_asks_for_a_reference_it_can_have(cli, fit_args, data_dir, capsys):
    """A frozen copy of a sharded model cannot be made: refused in one line, before any process starts."""
    pairs = ["--data.format", "preference", "--data.train_path", str(data_dir / "pref_train.jsonl")]
    args = fit_args("--trainer.devices", "2", "--model.objective", "DPO", *pairs)
    assert cli(["fit", "--config", str(ROOT / "configs/strategy/fsdp2.yaml"), *args[1:]]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    expected = (
        "error: --model.objective DPO with Full fine-tuning under FSDP2Strategy: the frozen reference copy of a "
        "sharded model cannot be made; set --model.objective.reference precomputed, or train an adapter (LoRA)"
    )
    assert errors == [expected]


def run_fsdp1_qlora(tiny_model, storage: str) -> str:
    script = ROOT / "tests/scripts/fsdp1_qlora.py"
    done = subprocess.run([sys.executable, script, tiny_model, storage], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_qlora_under_fsdp_stores_its_4bit_weights_so_fsdp_can_flatten_them(tiny_model):
    """FSDP (1) runs only on GPUs under Lightning; torch's FSDP on CPU shows the flattening the preset needs."""
    assert run_fsdp1_qlora(tiny_model, "uint8") == "FSDP refused: Cannot flatten integer dtype tensors"
    trainer = Namespace(strategy=Namespace(class_path="lightning.pytorch.strategies.FSDPStrategy"))
    model = Namespace(
        method=Namespace(class_path="lightning_ft.methods.QLoRA", init_args=Namespace(quant_storage="uint8"))
    )
    fit_method_to_strategy(trainer, model)
    storage = model.method.init_args.quant_storage
    assert storage == "float32"
    assert run_fsdp1_qlora(tiny_model, storage) == "ok"  # a step moved the adapter, not the 4-bit base

    model.method.init_args.quant_storage = "bfloat16"  # a non-uniform unit: refused in one line, before loading
    with pytest.raises(UserError, match="quant_storage bfloat16 cannot be flattened by FSDP"):
        fit_method_to_strategy(trainer, model)


@pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed builds its CPU communication op with g++")
def test_consolidate_turns_a_deepspeed_zero3_checkpoint_into_one_file(cli, tmp_path):
    script = ROOT / "tests/scripts/deepspeed_zero3_checkpoint.py"
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    subprocess.run([sys.executable, script, tmp_path / "last.ckpt", tmp_path / "expected.pt"], check=True, env=env)
    assert cli(["consolidate", str(tmp_path / "last.ckpt"), str(tmp_path / "one.ckpt")]) == 0
    consolidated = torch.load(tmp_path / "one.ckpt", weights_only=False)
    expected = torch.load(tmp_path / "expected.pt")
    assert consolidated["global_step"] == 1 and consolidated["hyper_parameters"] == {"method": "test"}
    assert consolidated["state_dict"].keys() == expected.keys()  # the trained weights only
    for name, value in expected.items():
        torch.testing.assert_close(consolidated["state_dict"][name], value, rtol=0, atol=0)


def test_consolidate_refuses_what_it_cannot_read_in_one_line(cli, tmp_path, capsys):
    (tmp_path / "plain.ckpt").write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "taken.ckpt").write_bytes(b"x")
    cases = [
        (
            ["consolidate", str(tmp_path / "plain.ckpt"), str(tmp_path / "out.ckpt")],
            "is a single-file checkpoint already",
        ),
        (["consolidate", str(tmp_path / "missing"), str(tmp_path / "out.ckpt")], "is not found"),
        (["consolidate", str(tmp_path / "folder"), str(tmp_path / "out.ckpt")], "holds neither FSDP shards"),
        (["consolidate", str(tmp_path / "folder"), str(tmp_path / "taken.ckpt")], "exists; choose another OUT"),
        (
            ["consolidate", str(tmp_path / "folder")],
            "arguments are required: output (see lightning-ft consolidate --help)",
        ),
    ]
    for argv, message in cases:
        assert cli(argv) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("launch", ["lightning", "torchrun"])
def test_a_two_node_launch_without_slurm_trains_with_one_writer(fit_args, tmp_path, launch):
    """Each "node" started as README shows: `torchrun --nnodes 2 --node_rank R ...`, or Lightning's own launch,
    `NODE_RANK=R MASTER_ADDR=... lightning-ft fit --trainer.num_nodes 2`. Under the latter Lightning took node 1's first
    process for rank 0 until its strategy was set up, so it took the run dir's lock (and would write the W&B id) as
    node 0 did, and stopped: 'run dir is in use'."""
    port = str(20000 + (os.getpid() + len(launch)) % 20000)
    args = fit_args("--trainer.num_nodes", "2", "--trainer.max_steps", "2", run_dir=tmp_path / "run")
    fit = ["-m", "lightning_ft", args[0], "--config", str(ROOT / "configs/strategy/ddp.yaml"), *args[1:]]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    if launch == "torchrun":
        rendezvous = ["--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}"]
        commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node)]
                    + rendezvous + fit for node in (0, 1)]  # fmt: skip
    else:
        commands = [[sys.executable, *fit]] * 2
    nodes = [
        subprocess.Popen(
            command, env={**env, "NODE_RANK": str(node)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for node, command in enumerate(commands)
    ]
    try:
        outputs = [node.communicate(timeout=120)[0] for node in nodes]
    finally:  # one that failed leaves the other waiting for it
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][-2000:] + outputs[0][-2000:]
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
