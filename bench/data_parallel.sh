#!/usr/bin/env bash
# Data-parallel training throughput (issue 10; bench/RESULTS.md "data parallel"): the 130m preset,
# 8 rows of 2048 tokens per GPU, bf16, on 1 GPU and on N GPUs of this host (`--gpus N`, the same
# per-GPU batch), alternating, several rounds. Prints each run's steady tokens/s (the median of
# the steps after the first two, from metrics.jsonl) and the speed-up.
#   bench/data_parallel.sh MAMBA2 [GPUS=2] [ROUNDS=2] [STEPS=12]
set -euo pipefail
bin="$1" gpus="${2:-2}" rounds="${3:-2}" steps="${4:-12}"
here="$(cd "$(dirname "$0")/.." && pwd)"
export NCCL_NVLS_ENABLE=0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
steady() {  # the median tokens/s of steps 3 … of a metrics.jsonl
  python3 -c 'import json, statistics, sys
v = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1])][2:]
print(f"{statistics.median(v):.0f}")' "$1"
}
for round in $(seq "$rounds"); do
  for g in 1 "$gpus"; do
    rm -rf "$work/run"
    "$bin" train --out "$work/run" --preset 130m --tokenizer "$here/tests/fixtures/tokenizer/gpt-neox-20b.json" \
      --train "$here/models/kjv/val.txt" --seq-len 2048 --batch-size $((8 * g)) --max-steps "$steps" --dtype bf16 \
      --gpus "$g" > "$work/log" 2>&1 || { cat "$work/log"; exit 1; }
    t=$(steady "$work/run/metrics.jsonl")
    [ "$g" = 1 ] && one=$t
    echo "round $round: $g GPU(s), batch $((8 * g)) x 2048: $t tokens/s$([ "$g" != 1 ] && python3 -c "print(f' ({$t / $one:.2f}x one GPU)')")"
  done
done
