"""A DeepSpeed ZeRO-3 checkpoint saved the way Lightning's DeepSpeedStrategy saves one (tag "checkpoint", the
Lightning checkpoint as client state, frozen parameters excluded), on CPU with one gloo process: Lightning refuses
DeepSpeed without CUDA, DeepSpeed itself does not.

Run by tests/test_scale.py as `DS_ACCELERATOR=cpu python deepspeed_zero3_checkpoint.py CKPT_DIR EXPECTED`; EXPECTED
gets the full fp32 values of the trained parameters after one step.
"""

import os
import sys
import warnings

import torch

ckpt_dir, expected = sys.argv[1:3]
warnings.simplefilter("ignore")
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(20000 + os.getpid() % 20000))
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
import deepspeed
from deepspeed.utils import safe_get_full_fp32_param

deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
model[0].weight.requires_grad_(False)  # a frozen base weight, as with an adapter method
config = {
    "train_micro_batch_size_per_gpu": 1,
    "zero_optimization": {"stage": 3},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
}
trained = [p for p in model.parameters() if p.requires_grad]
engine, *_ = deepspeed.initialize(model=model, model_parameters=trained, config=config)
engine.backward(engine(torch.randn(1, 8)).sum())
engine.step()
client_state = {"global_step": 1, "epoch": 0, "hyper_parameters": {"method": "test"}}
engine.save_checkpoint(ckpt_dir, tag="checkpoint", client_state=client_state, exclude_frozen_parameters=True)
named = {name: safe_get_full_fp32_param(p).clone() for name, p in model.named_parameters() if p.requires_grad}
torch.save(named, expected)
