#!/usr/bin/env bash
# Real against complex Mamba-1 scans of the same size on an oscillating synthetic stream (issue 11;
# bench/RESULTS.md "real vs complex"). Same parameter count and state size: the real model has
# d_state 16, the complex one d_state 8 (8 complex states: A_log and A_imag, B and C 16 wide).
#   bench/complex_vs_real.sh MAMBA2 OUT_DIR [SEEDS="1 2 3"] [STEPS=400]
# Prints each run's validation loss (nats per symbol) at every evaluation.
set -euo pipefail
bin="$1" out="$2" seeds="${3:-1 2 3}" steps="${4:-400}"
here="$(cd "$(dirname "$0")/.." && pwd)"
python3 "$here/scripts/make_oscillation_data.py" "$out/data"
"$bin" train-tokenizer --input "$out/data/train.txt" --out "$out/data/tokenizer.json" --vocab-size 257 --force > /dev/null
for kind in real complex; do
  extra=$([ "$kind" = real ] && echo "--d-state 16" || echo "--d-state 8 --complex")
  # shellcheck disable=SC2086
  "$bin" init --preset mamba-130m --d-model 64 --n-layer 2 --vocab-size 257 $extra --out "$out/init-$kind" --force > /dev/null
  "$bin" info --model "$out/init-$kind" | grep -E "^parameters"
  for seed in $seeds; do
    run="$out/$kind-$seed"
    rm -rf "$run"
    "$bin" train --init-from "$out/init-$kind" --tokenizer "$out/data/tokenizer.json" --train "$out/data/train.txt" \
      --val "$out/data/val.txt" --seq-len 1024 --batch-size 8 --max-steps "$steps" --lr 3e-3 --warmup-steps 20 \
      --eval-interval 50 --eval-rows 0 --seed "$seed" --device cpu --threads 2 --out "$run" > "$run.log" 2>&1
    echo "$kind seed $seed: $(python3 -c "import json,sys; print(' '.join(f\"{j['step']}:{j['val_loss']:.4f}\" for j in map(json.loads, open(sys.argv[1])) if 'val_loss' in j))" "$run/metrics.jsonl")"
  done
done
