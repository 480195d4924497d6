#!/usr/bin/env bash
# The GPU matrix: every strategy preset x every method, 2 training steps each on a tiny Llama, plus a save/resume
# (2 more steps from last.ckpt, consolidated when sharded) per strategy, 4 runs at a time; prints a table. Meant for a GPU machine after
# `make install TORCH=...` with CUDA; about 4-6 minutes on one H200.
#   scripts/gpu_check.sh [DEVICES]        # DEVICES per run, default 1 (all strategies run at world size 1 too)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DEVICES=${1:-1}
ACCELERATOR=${ACCELERATOR:-gpu}  # ACCELERATOR=cpu STRATEGIES="ddp fsdp2" checks the script itself on a CPU machine
WORK=$(mktemp -d /tmp/gpu-check-XXXX)
export LIGHTNING_FT_CACHE=$WORK/cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

# A tiny model and data, as the tests make them.
$PYTHON - "$WORK" <<'PY'
import json, random, sys
from pathlib import Path
sys.path.insert(0, "scripts")
from tiny_model import WORDS, build_tiny_llama
work = Path(sys.argv[1]); rng = random.Random(0)
rows = [{"instruction": "Reverse the words.", "input": " ".join(w), "output": " ".join(w[::-1])}
        for w in (rng.sample(WORDS, 3) for _ in range(64))]
(work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
build_tiny_llama(work / "model", [json.dumps(r) for r in rows], hidden=128, layers=2, heads=4, kv_heads=2)
PY

run() {  # strategy method [resume] -> one line "strategy method status seconds"
  local strategy=$1 method=$2 resume=${3:-}
  local dir=$WORK/runs/$strategy-$method log=$WORK/logs/$strategy-$method${resume:+-resume}.log start=$SECONDS
  mkdir -p "$WORK/logs"
  local args=(fit --config configs/lora.yaml --config "configs/strategy/$strategy.yaml"
    --model.model_name_or_path "$WORK/model" --model.method "$method" --model.dtype "${DTYPE:-bfloat16}"
    --data.train_path "$WORK/train.jsonl" --data.batch_size 4 --data.num_workers 0
    --trainer.devices "$DEVICES" --trainer.accelerator "$ACCELERATOR" --trainer.default_root_dir "$dir"
    --trainer.logger false --trainer.enable_progress_bar false --trainer.max_steps 2)
  [ "$method" = PrefixTuning ] && args+=(--data.batching group_by_length)
  [ "$ACCELERATOR" = cpu ] && args+=(--trainer.precision 32-true)
  [ "$method" = QLoRA ] && args+=(--model.method.compute_dtype bfloat16)  # FSDP: float32 storage, set by the CLI
  [ -n "$resume" ] && args+=(--trainer.max_steps 4 --ckpt_path last)
  MASTER_PORT=$((20000 + RANDOM % 20000)) timeout 300 $PYTHON -m lightning_ft "${args[@]}" >"$log" 2>&1
  local rc=$? status=ok last=$dir/checkpoints/last.ckpt
  if [ $rc -eq 0 ] && [ -n "$resume" ] && [ -d "$last" ]; then  # a sharded checkpoint (DeepSpeed): one file
    $PYTHON -m lightning_ft consolidate "$last" "$dir/consolidated.ckpt" >>"$log" 2>&1 && status="ok, consolidated" || rc=1
  fi
  if [ $rc -ne 0 ]; then status="FAIL: $(grep -m1 -E '^error:|Error' "$log" | cut -c1-90)"; fi
  echo "$strategy|$method${resume:+ +resume}|$status|$((SECONDS - start))s"
}
export -f run; export WORK PYTHON DEVICES ACCELERATOR

STRATEGIES=${STRATEGIES:-ddp fsdp fsdp2 deepspeed_zero2 deepspeed_zero3}
METHODS=${METHODS:-Full LoRA QLoRA PrefixTuning BottleneckAdapter}
for s in $STRATEGIES; do for m in $METHODS; do echo "$s $m"; done; done \
  | xargs -P 4 -L 1 bash -c 'run "$0" "$1"' > "$WORK/results.txt"
for s in $STRATEGIES; do echo "$s LoRA resume"; done | xargs -P 4 -L 1 bash -c 'run "$0" "$1" "$2"' >> "$WORK/results.txt"

$PYTHON - "$WORK/results.txt" <<'PY'
import sys
from rich.console import Console
from rich.table import Table
table = Table(title="GPU matrix: 2 steps per strategy x method (+ a resume per strategy)")
for column in ("strategy", "method", "result", "time"):
    table.add_column(column)
for line in sorted(open(sys.argv[1]).read().splitlines()):
    strategy, method, status, seconds = line.split("|")
    table.add_row(strategy, method, f"[red]{status}[/]" if status.startswith("FAIL") else f"[green]{status}[/]", seconds)
Console(width=160).print(table)
PY
echo "logs: $WORK/logs"
! grep -q "|FAIL" "$WORK/results.txt"
