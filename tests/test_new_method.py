"""A method defined only in this file ((IA)^3 through peft) trains, checkpoints, resumes, exports and shows in the
model card with no edit to lightning_ft: the promise that a new method is one file (and, for a short name, one
registry line)."""

import json
from dataclasses import dataclass, field

import torch
import yaml
from peft import IA3Config, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from lightning_ft.methods import Method
from lightning_ft.methods.lora import PEFT_TASK_TYPES


@dataclass
class IA3(Method):
    """(IA)^3 (Liu et al. 2022): learned vectors that rescale keys, values and the MLP's inner activations."""

    target_modules: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    feedforward_modules: list[str] = field(default_factory=lambda: ["down_proj"])

    can_merge = True

    def apply(self, model: nn.Module, task: str) -> nn.Module:
        config = IA3Config(
            task_type=PEFT_TASK_TYPES[task],
            target_modules=self.target_modules,
            feedforward_modules=self.feedforward_modules,
        )
        return get_peft_model(model, config)

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()


def test_a_method_defined_outside_lightning_ft_trains_resumes_and_exports(cli, fit_args, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    method = ("--model.method", IA3.class_path(), "--model.optim.lr", "0.05")
    assert cli(fit_args(*method, run_dir=run_dir)) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["hyper_parameters"]["method"]["class_path"] == "test_new_method.IA3"
    trained = first["state_dict"]
    assert trained and all("ia3_l" in name for name in trained)  # only the scaling vectors are saved
    assert any(not torch.equal(value, torch.ones_like(value)) for value in trained.values())  # they trained

    assert cli(fit_args(*method, "--trainer.max_steps", "4", "--ckpt_path", "last", run_dir=run_dir)) == 0
    assert torch.load(last, weights_only=False)["global_step"] == 4

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert cli(["export", "--ckpt", str(last), "--output", str(adapter)]) == 0
    assert cli(["export", "--ckpt", str(last), "--output", str(merged), "--merge"]) == 0
    record = json.loads((adapter / "lightning_ft_export.json").read_text())
    assert record["format"] == "adapter" and record["check"]["top1_agreement"] == 1.0

    card = (adapter / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "peft" and "ia3" in header["tags"]
    assert "PeftModel.from_pretrained(base, PATH)" in card

    # What the card says to run, without lightning_ft, computes what the merged export computes.
    inputs = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)(inputs).logits
        folded = AutoModelForCausalLM.from_pretrained(merged)(inputs).logits
    torch.testing.assert_close(plain, folded, atol=1e-5, rtol=1e-5)
