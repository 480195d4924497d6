"""Optimizer groups and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_ft.errors import UserError
from lightning_ft.optim import Optim, build_optimizer, build_scheduler, parameter_groups


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.input_layernorm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_no_weight_decay_on_biases_and_norms():
    model = Block()
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["params"] == [model.proj.weight] and decay["weight_decay"] == 0.1
    assert {id(p) for p in no_decay["params"]} == {
        id(model.proj.bias),
        id(model.input_layernorm.weight),
        id(model.input_layernorm.bias),
    }
    assert no_decay["weight_decay"] == 0.0


def lrs(optim: Optim, total: int) -> list[float]:
    optimizer = build_optimizer(Block(), optim)
    scheduler = build_scheduler(optimizer, optim, total)
    values = []
    for _ in range(total):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_ratio_then_cosine_to_zero():
    values = lrs(Optim(lr=1.0, scheduler="cosine", warmup_ratio=0.1), total=100)
    assert values[0] == 0.0 and values[5] == pytest.approx(0.5) and values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert values[-1] < 0.001


def test_linear_and_constant_schedules():
    linear = lrs(Optim(lr=1.0, scheduler="linear", warmup_steps=4), total=20)
    assert linear[2] == pytest.approx(0.5) and linear[12] == pytest.approx(0.5)
    constant = lrs(Optim(lr=1.0, scheduler="constant", warmup_steps=4), total=20)
    assert constant[2] == pytest.approx(0.5) and constant[4:] == [1.0] * 16


def test_warmup_given_twice_is_refused():
    with pytest.raises(UserError, match="either --model.optim.warmup_steps or --model.optim.warmup_ratio"):
        Optim(warmup_steps=10, warmup_ratio=0.1)


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizers_step_on_this_platform(name):
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    before = layer.weight.detach().clone()
    optimizer = build_optimizer(layer, Optim(name=name, lr=1e-2))
    assert type(optimizer).__module__.startswith("bitsandbytes")
    layer(torch.randn(8, 64)).pow(2).mean().backward()
    optimizer.step()
    assert not torch.equal(layer.weight, before)
