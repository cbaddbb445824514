#!/usr/bin/env bash
# Side by side with llama.cpp: alternates llama-bench and `mamba2 bench` on the same model (f32),
# same thread count, for several rounds, so that both see the same machine state.
#   bench/llama_side_by_side.sh LLAMA_BENCH MODEL.gguf MAMBA2 MODEL [ROUNDS] [THREADS]
# llama.cpp is built outside this repository; the GGUF comes from scripts/hf_to_gguf.py --type f32
# (or llama.cpp's convert_hf_to_gguf.py --outtype f32) on a Mamba2 or Mamba-1 model folder, and
# MODEL is that folder or the GGUF file itself. Environment variables (MAMBA2_ISA,
# OPENBLAS_CORETYPE, OMP_WAIT_POLICY) pass through.
set -euo pipefail
llama="$1" gguf="$2" ours="$3" model="$4" rounds="${5:-3}" threads="${6:-2}"
"$ours" --version
for r in $(seq 1 "$rounds"); do
  echo "== round $r, $(date -u +%H:%M:%S) UTC"
  "$llama" -m "$gguf" -t "$threads" -p 512,2048 -n 128 -r 3 2>/dev/null | grep -E "pp|tg"
  "$ours" bench --model "$model" --threads "$threads" --repeats 3 --decode-tokens 128 2>&1 | grep -E "prefill|decode"
done
