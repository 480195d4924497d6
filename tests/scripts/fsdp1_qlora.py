"""One training step of QLoRA wrapped in FSDP (1) the way configs/strategy/fsdp.yaml wraps it (one unit per transformer
block, use_orig_params), on CPU with one gloo process: Lightning refuses FSDP without CUDA, torch does not.

Run by tests/test_scale.py as `python fsdp1_qlora.py MODEL QUANT_STORAGE`; prints "ok" after checking that the
adapter moved and the 4-bit base did not, or the error FSDP raised.
"""

import os
import sys
import warnings

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel

from lightning_ft.distributed import TransformerBlocks
from lightning_ft.loading import load_model
from lightning_ft.methods import QLoRA

model_dir, storage = sys.argv[1:3]
warnings.simplefilter("ignore")
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(20000 + os.getpid() % 20000))
dist.init_process_group("gloo", rank=0, world_size=1)
torch.manual_seed(0)
method = QLoRA(r=4, dropout=0.0, quant_storage=storage)
model = method.apply(load_model(model_dir, "causal_lm", quantization_config=method.quantization_config()), "causal_lm")
before = {name: p.detach().clone() for name, p in model.named_parameters()}
try:
    wrapped = FullyShardedDataParallel(
        model.train(), auto_wrap_policy=TransformerBlocks(), use_orig_params=True, device_id=torch.device("cpu")
    )
except ValueError as err:
    print(f"FSDP refused: {err}")
    sys.exit(0)
optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
wrapped(input_ids=ids, labels=ids).loss.backward()
optimizer.step()
with FullyShardedDataParallel.summon_full_params(wrapped):
    after = {name.replace("_fsdp_wrapped_module.", ""): p.detach().clone() for name, p in wrapped.named_parameters()}
# Bytes, not values: 4-bit data stored as float32 holds NaN bit patterns, and NaN != NaN.
moved = {
    n for n in before.keys() & after.keys() if not torch.equal(before[n].view(torch.uint8), after[n].view(torch.uint8))
}
adapters = {name for name in before if "lora_" in name}
four_bit = {name for name in before.keys() & after.keys() if "base_layer" in name}
assert moved == adapters and four_bit, (sorted(moved - adapters)[:3], sorted(adapters - moved)[:3], len(four_bit))
print("ok")
