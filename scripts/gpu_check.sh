#!/usr/bin/env bash
# The GPU matrix: every strategy preset x every method, 2 training steps each on a tiny Llama, plus a save/resume
# (2 more steps from last.ckpt, consolidated when sharded) per strategy, 4 runs at a time; then the extras: a
# 2-process run with two node ranks (torchrun, CPU gloo: two ranks cannot share one GPU under NCCL), QLoRA's peak GPU
# memory against LoRA's on a ~0.6B model, and lightning_ft's training throughput on that model (tokens/s, MFU, peak
# memory). Prints one table; all of it within BUDGET seconds (default 480), what has no time left reads SKIP (and
# fails the check if it is a matrix run).
#   scripts/gpu_check.sh [DEVICES]        # DEVICES per matrix run, default 1 (all strategies run at world size 1 too)
# On the lent GPU machine (python3 = Python 3.12 with torch, transformers, lightning, ...; no package registry):
# first `scripts/gpu_wheels.sh` here, and carry gpu_wheels/ (ignored by git) to the machine; this script installs those
# wheels with pip --no-index into a folder of its own, on PYTHONPATH with the repository (whose code is the one
# tested, never a stale build of it). The table, the raw results and the logs (logs.tar.gz) land in $OUT when set.
#   ACCELERATOR=cpu STRATEGIES="ddp fsdp2" METHODS=LoRA scripts/gpu_check.sh   # checks the script itself on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICES=${1:-1}
ACCELERATOR=${ACCELERATOR:-gpu}
PARALLEL=${PARALLEL:-4}
DEADLINE=$(($(date +%s) + ${BUDGET:-480}))
WORK=$(mktemp -d /tmp/gpu-check-XXXX)
REPORT=${OUT:-$WORK}
mkdir -p "$WORK/logs" "$REPORT"
export LIGHTNING_FT_CACHE=$WORK/cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
left() { echo $((DEADLINE - $(date +%s))); }
limit() { local l=$(($(left) - ${1:-0})); echo $((l < ${2:-180} ? l : ${2:-180})); }  # [reserve] [cap]: seconds
echo "python: $PYTHON; work: $WORK; report: $REPORT; budget: $(left)s"

# The wheels the machine lacks (scripts/gpu_wheels.sh), for a Python without the project's needs (USE_WHEELS=1: any).
if [ -d gpu_wheels ] && { [ "${USE_WHEELS:-}" = 1 ] || ! $PYTHON -c "import jsonargparse, datasets" 2>/dev/null; }; then
  if ! $PYTHON -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$WORK/site" gpu_wheels/*.whl >"$WORK/logs/install.log" 2>&1; then
    echo "installing gpu_wheels/ failed:"; tail -20 "$WORK/logs/install.log"; exit 1
  fi
  export PYTHONPATH="$PYTHONPATH:$WORK/site" PATH="$WORK/site/bin:$PATH"
  echo "installed $(ls gpu_wheels/*.whl | wc -l) wheels from gpu_wheels/ into $WORK/site"
fi
# The versions in use, and any requirement of the added wheels that the machine's packages do not meet.
$PYTHON - "$WORK/site" <<'PY' | tee "$REPORT/versions.txt"
import importlib.metadata as md, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
for name in ("torch", "transformers", "lightning", "peft", "bitsandbytes", "deepspeed", "datasets", "jsonargparse"):
    try:
        print(f"{name} {md.version(name)}", end="; ")
    except md.PackageNotFoundError:
        print(f"{name} MISSING", end="; ")
print(sys.version.split()[0])
for dist in md.distributions(path=[sys.argv[1]]):
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            found = md.version(req.name)
        except md.PackageNotFoundError:
            found = None
        if found is None or not req.specifier.contains(found, prereleases=True):
            print(f"warning: {dist.metadata['Name']} needs {req}, found {found or 'none'}")
PY

# A tiny model and data, as the tests make them; longer records for the ~0.6B model of the extras.
{ $PYTHON - "$WORK" <<'PY'
import json, random, sys
from pathlib import Path
sys.path.insert(0, "scripts")
from tiny_model import WORDS, build_tiny_llama
work = Path(sys.argv[1]); rng = random.Random(0)
rows = [{"instruction": "Reverse the words.", "input": " ".join(w), "output": " ".join(w[::-1])}
        for w in (rng.sample(WORDS, 3) for _ in range(64))]
(work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
long = [{"instruction": "Reverse the words.", "input": " ".join(w), "output": " ".join(w[::-1])}
        for w in ([rng.choice(WORDS) for _ in range(rng.randint(80, 160))] for _ in range(512))]
(work / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long))
build_tiny_llama(work / "model", [json.dumps(r) for r in rows], hidden=128, layers=2, heads=4, kv_heads=2)
PY
} >"$WORK/logs/setup.log" 2>&1 || { echo "making the tiny model failed:"; tail -20 "$WORK/logs/setup.log"; exit 1; }

run() {  # strategy method [resume] -> one line "strategy|method|status|seconds"
  local strategy=$1 method=$2 resume=${3:-}
  local dir=$WORK/runs/$strategy-$method log=$WORK/logs/$strategy-$method${resume:+-resume}.log start=$SECONDS
  local seconds; seconds=$(limit 0 180)
  if [ "$seconds" -lt 30 ]; then echo "$strategy|$method${resume:+ +resume}|SKIP: out of time|0s"; return; fi
  local args=(fit --config configs/lora.yaml --config "configs/strategy/$strategy.yaml"
    --model.model_name_or_path "$WORK/model" --model.method "$method" --model.dtype "${DTYPE:-bfloat16}"
    --data.train_path "$WORK/train.jsonl" --data.batch_size 4 --data.num_workers 0
    --trainer.devices "$DEVICES" --trainer.accelerator "$ACCELERATOR" --trainer.default_root_dir "$dir"
    --trainer.logger false --trainer.enable_progress_bar false --trainer.max_steps 2)
  [ "$method" = PrefixTuning ] && args+=(--data.batching group_by_length)
  [ "$ACCELERATOR" = cpu ] && args+=(--trainer.precision 32-true)
  [ "$method" = QLoRA ] && args+=(--model.method.compute_dtype bfloat16)  # FSDP: float32 storage, set by the CLI
  [ -n "$resume" ] && args+=(--trainer.max_steps 4 --ckpt_path last)
  MASTER_PORT=$((20000 + RANDOM % 20000)) timeout "$seconds" $PYTHON -m lightning_ft "${args[@]}" >"$log" 2>&1
  local rc=$? status=ok last=$dir/checkpoints/last.ckpt
  if [ $rc -eq 0 ] && [ -n "$resume" ] && [ -d "$last" ]; then  # a sharded checkpoint (DeepSpeed): one file
    $PYTHON -m lightning_ft consolidate "$last" "$dir/consolidated.ckpt" >>"$log" 2>&1 && status="ok, consolidated" || rc=1
  fi
  if [ $rc -eq 124 ]; then status="FAIL: timed out after ${seconds}s"
  elif [ $rc -ne 0 ]; then status="FAIL: $(grep -m1 -E '^error:|Error' "$log" | cut -c1-90)"; fi
  echo "$strategy|$method${resume:+ +resume}|$status|$((SECONDS - start))s"
}

two_node_ranks() {  # torchrun twice, node ranks 0 and 1 of 2, one CPU process each (gloo): both must exit 0
  local start=$SECONDS port=$((20000 + RANDOM % 20000)) seconds pids=() failed=""
  seconds=$(limit 0 240)
  for rank in 0 1; do
    CUDA_VISIBLE_DEVICES="" timeout "$seconds" $PYTHON -m torch.distributed.run --nnodes 2 --node_rank $rank \
      --nproc_per_node 1 --master_addr 127.0.0.1 --master_port $port -m lightning_ft fit --config configs/lora.yaml \
      --config configs/strategy/ddp.yaml --model.model_name_or_path "$WORK/model" --model.method LoRA \
      --model.dtype float32 --data.train_path "$WORK/train.jsonl" --data.batch_size 4 --data.num_workers 0 \
      --trainer.num_nodes 2 --trainer.devices 1 --trainer.accelerator cpu --trainer.precision 32-true \
      --trainer.default_root_dir "$WORK/runs/two-node-ranks" --trainer.logger false \
      --trainer.enable_progress_bar false --trainer.max_steps 2 >"$WORK/logs/two-node-rank$rank.log" 2>&1 &
    pids+=($!)
  done
  for rank in 0 1; do
    wait "${pids[$rank]}" || failed+=" rank $rank exit $?: $(grep -m1 -E '^error:|Error' "$WORK/logs/two-node-rank$rank.log" | cut -c1-70);"
  done
  [ -z "$failed" ] && ! grep -q "Starting with 2 processes" "$WORK/logs/two-node-rank0.log" && failed=" not one run of 2 processes"
  echo "extra|2 node ranks x 1 process (torchrun, CPU gloo)|${failed:+FAIL:}${failed:-ok, both ranks exit 0}|$((SECONDS - start))s"
}

bench_prepare() {  # the ~0.6B workload of bench_throughput.py (records, tokenizer, model, tokenized examples)
  timeout "$(limit 60 300)" $PYTHON - "$WORK" ${BENCH_SIZES:-2048 14 16} >"$WORK/logs/bench-prepare.log" 2>&1 <<'PY'
import math, sys
from pathlib import Path
sys.path.insert(0, "scripts")
import bench_throughput
from safetensors import safe_open
work = Path(sys.argv[1])
hidden, layers, heads = sys.argv[2:5]  # BENCH_SIZES: 2048 14 16 make ~0.6B parameters (the vocabulary is small)
args = bench_throughput.build_parser().parse_args([
    "--data", str(work / "bench.jsonl"), "--records", "512", "--hidden", hidden, "--layers", layers, "--heads", heads,
    "--batch_size", "8", "--max_length", "512", "--steps", "30"])
(work / "bench").mkdir()
workload = bench_throughput.prepare(args, work / "bench")
parameters = 0
for file in Path(workload.model_dir).glob("*.safetensors"):
    with safe_open(str(file), "pt") as f:
        parameters += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
(work / "bench" / "parameters.txt").write_text(str(parameters))
print(f"prepared: {parameters / 1e9:.2f}B parameters in {workload.model_dir}")
PY
}

memory_qlora_vs_lora() {  # peak GPU memory (run.json's memory) of QLoRA against LoRA, 4 steps on the 0.6B model
  local start=$SECONDS seconds m pids=()
  seconds=$(limit 60 240)
  for m in LoRA QLoRA; do
    local extra=(); [ $m = QLoRA ] && extra=(--model.method.compute_dtype bfloat16)
    timeout "$seconds" $PYTHON -m lightning_ft fit --config configs/lora.yaml --model.model_name_or_path "$WORK/bench/model" \
      --model.method $m "${extra[@]}" --data.train_path "$WORK/bench.jsonl" --data.max_length 512 --data.batch_size 4 \
      --data.num_workers 0 --trainer.devices 1 --trainer.accelerator gpu --trainer.max_steps 4 --trainer.logger false \
      --trainer.enable_progress_bar false --trainer.default_root_dir "$WORK/runs/memory-$m" \
      >"$WORK/logs/memory-$m.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[0]}"; local lora=$?; wait "${pids[1]}"; local qlora=$?
  local status
  status=$($PYTHON - "$WORK/runs" "$lora" "$qlora" "$REPORT/memory.json" <<'PY'
import json, sys
from pathlib import Path
runs, codes, out = Path(sys.argv[1]), {"LoRA": sys.argv[2], "QLoRA": sys.argv[3]}, Path(sys.argv[4])
peak = {}
for method, code in codes.items():
    record = runs / f"memory-{method}" / "run.json"
    memory = json.loads(record.read_text()).get("memory") if record.is_file() else None
    if code != "0" or not memory or memory.get("peak_gpu_allocated_mb") is None:
        print(f"FAIL: {method} exit {code}, memory {memory}"); sys.exit()
    peak[method] = memory["peak_gpu_allocated_mb"]
out.write_text(json.dumps(peak))
verdict = "ok" if peak["QLoRA"] < peak["LoRA"] else "FAIL: QLoRA not below LoRA"
print(f"{verdict}: QLoRA {peak['QLoRA']:,.0f} MB vs LoRA {peak['LoRA']:,.0f} MB ({peak['QLoRA'] / peak['LoRA']:.0%})")
PY
)
  echo "extra|peak GPU memory, QLoRA vs LoRA (0.6B, 4 steps)|$status|$((SECONDS - start))s"
}

throughput() {  # bench_throughput.py's lightning_ft contender alone on the GPU, on the prepared 0.6B workload
  local start=$SECONDS seconds status
  seconds=$(limit 10 300)
  if [ "$seconds" -lt 60 ]; then echo "extra|throughput, lightning_ft (0.6B)|SKIP: out of time|0s"; return; fi
  status=$(timeout "$seconds" $PYTHON - "$WORK/bench" "$REPORT/bench.json" 2>"$WORK/logs/bench.log" <<'PY'
import contextlib, json, sys
from pathlib import Path
sys.path.insert(0, "scripts")
import bench_throughput
from throughput_contenders import Workload
work, out = Path(sys.argv[1]), Path(sys.argv[2])
workload = Workload.load(work)
try:
    result = bench_throughput.run_in_process("lightning_ft", work, "scripts/bench_throughput.py")
except SystemExit as failed:  # its message ends with the contender's stderr
    print(failed, file=sys.stderr)
    print(f"FAIL: {([l for l in str(failed).splitlines() if l.strip()] or ['?'])[-1][:90]}"); sys.exit()
row = bench_throughput.summarise([result], workload)[0]
with contextlib.redirect_stdout(sys.stderr):  # the bench's own table, into bench.log
    bench_throughput.print_table([row], {}, workload)
parameters = int((work / "parameters.txt").read_text())
out.write_text(json.dumps({"parameters": parameters, "row": row, "run": result}, indent=1))
mfu = f"MFU {row['mfu']:.1%}" if row["mfu"] else "MFU -"
gpu = f"{row['peak_gpu_mb']:,.0f}" if row["peak_gpu_mb"] else "-"
print(f"ok: {row['tokens_per_s']:,.0f} tokens/s, {mfu}, peak GPU {gpu} MB ({parameters / 1e6:,.0f}M parameters, {result['forwards']} batches)")
PY
)
  [ $? -eq 124 ] && status="FAIL: timed out after ${seconds}s"
  echo "extra|throughput, lightning_ft (0.6B)|${status:-FAIL: no result, see bench.log}|$((SECONDS - start))s"
}
export -f run limit left; export WORK PYTHON DEVICES ACCELERATOR DEADLINE

# The 2-node-rank run (CPU) and the 0.6B workload (CPU) beside the matrix.
two_node_ranks >"$WORK/extras-two-node.txt" &
TWO_NODE=$!
if [ "$ACCELERATOR" != cpu ]; then bench_prepare & PREPARE=$!; fi

STRATEGIES=${STRATEGIES:-ddp fsdp fsdp2 deepspeed_zero2 deepspeed_zero3}
METHODS=${METHODS:-Full LoRA QLoRA PrefixTuning BottleneckAdapter}
for s in $STRATEGIES; do for m in $METHODS; do echo "$s $m"; done; done \
  | xargs -P "$PARALLEL" -L 1 bash -c 'run "$0" "$1"' >"$WORK/matrix.txt"

# The resumes, and beside them QLoRA's memory against LoRA's; then the throughput alone on the GPU.
for s in $STRATEGIES; do echo "$s LoRA resume"; done | xargs -P "$PARALLEL" -L 1 bash -c 'run "$0" "$1" "$2"' >>"$WORK/matrix.txt" &
RESUMES=$!
if [ "$ACCELERATOR" = cpu ]; then
  echo "extra|peak GPU memory, QLoRA vs LoRA (0.6B, 4 steps)|SKIP: needs a GPU (ACCELERATOR=cpu)|0s" >"$WORK/extras-memory.txt"
  echo "extra|throughput, lightning_ft (0.6B)|SKIP: needs a GPU (ACCELERATOR=cpu)|0s" >"$WORK/extras-throughput.txt"
elif ! wait "$PREPARE"; then
  why=$(tail -1 "$WORK/logs/bench-prepare.log" | cut -c1-80)
  echo "extra|peak GPU memory, QLoRA vs LoRA (0.6B, 4 steps)|FAIL: preparing the 0.6B model: $why|-" >"$WORK/extras-memory.txt"
  echo "extra|throughput, lightning_ft (0.6B)|FAIL: preparing the 0.6B model: $why|-" >"$WORK/extras-throughput.txt"
else
  memory_qlora_vs_lora >"$WORK/extras-memory.txt"
fi
wait "$RESUMES"; wait "$TWO_NODE"
[ -f "$WORK/extras-throughput.txt" ] || throughput >"$WORK/extras-throughput.txt"
cat "$WORK"/extras-two-node.txt "$WORK"/extras-memory.txt "$WORK"/extras-throughput.txt >"$WORK/extras.txt"
cat "$WORK/matrix.txt" "$WORK/extras.txt" >"$REPORT/results.txt" 2>/dev/null || true

for log in $(grep -h "|FAIL" "$WORK/matrix.txt" | head -4 | awk -F'|' '{split($2, m, " "); print $1 "-" m[1] ($2 ~ /resume/ ? "-resume" : "")}'); do
  echo "--- $log.log (last lines)"; tail -4 "$WORK/logs/$log.log" | cut -c1-200
done
$PYTHON - "$WORK/matrix.txt" "$WORK/extras.txt" "$REPORT/table.txt" <<'PY'
import sys
from rich.console import Console
from rich.table import Table
table = Table(title="GPU matrix: 2 steps per strategy x method (+ a resume per strategy), then the extras")
for column in ("strategy", "method", "result", "time"):
    table.add_column(column)
matrix = sorted(open(sys.argv[1]).read().splitlines())
for line in matrix + open(sys.argv[2]).read().splitlines():
    strategy, method, status, seconds = line.split("|")
    colour = "red" if status.startswith("FAIL") else "yellow" if status.startswith("SKIP") else "green"
    table.add_row(strategy, method, f"[{colour}]{status}[/]", seconds)
console = Console(width=160, record=True)
console.print(table)
open(sys.argv[3], "w").write(console.export_text())
PY
if [ "$REPORT" != "$WORK" ]; then tar -czf "$REPORT/logs.tar.gz" -C "$WORK" logs; echo "logs: $REPORT/logs.tar.gz"
else echo "logs: $WORK/logs"; fi
echo "took $((${BUDGET:-480} - $(left)))s of ${BUDGET:-480}s"
! grep -q "|FAIL" "$WORK/matrix.txt" "$WORK/extras.txt" && ! grep -q "|SKIP" "$WORK/matrix.txt"  # extras may skip
