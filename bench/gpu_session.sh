#!/usr/bin/env bash
# One call on the GPU machine (the device tool), over a checkout that carries the portable build
# (scripts/package-portable.sh), packed as $PORTABLE (default .devrun/portable.tar.xz, a tar of
# mamba2-portable/{bin,lib}) and, for the baseline, .anchors/ (shared/anchors/README.md).
#   bench/gpu_session.sh tests     the GPU suite (scripts/run-gpu-tests.sh --bin ...)
#   bench/gpu_session.sh bench     mamba2 bench on the GPU beside mamba_ssm, same machine, same run
#                                  (BIG=1 adds the 2.7b preset; ANCHORS=0 skips mamba_ssm)
#   bench/gpu_session.sh serve     mamba2 serve on the GPU: greedy text (miss and cache hit) as
#                                  generate's, then bench/serve_bench.py
#   bench/gpu_session.sh profile   per-kernel times (Nsight Compute) of an SSD scan and a decode step
# Logs go to $OUT (or /tmp/out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/out}"
mkdir -p "$out"
# The test binary knows its fixtures by the build machine's path.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
export NCCL_NVLS_ENABLE=0
tar -C /tmp -xJf "${PORTABLE:-.devrun/portable.tar.xz}"
bin=/tmp/mamba2-portable/bin
models=/tmp/models
mkdir -p "$models"
[ -d "$models/130m" ] || "$bin/mamba2" init --preset 130m --dtype bf16 --out "$models/130m" > /dev/null
# `mamba2 serve` on the GPU at port $1 with the extra flags after it, its log appended to
# $out/serve.log; returns once /health answers (the model is loaded). stop_server ends it.
start_server() {
  local port="$1"
  shift
  "$bin/mamba2" serve --model "$models/130m" --device cuda --port "$port" --slots 64 "$@" 2>> "$out/serve.log" &
  server_pid=$!
  for _ in $(seq 100); do curl -sf "localhost:$port/health" > /dev/null && return; sleep 0.2; done
}
stop_server() { kill "$server_pid"; wait "$server_pid"; }
case "${1:-tests}" in
  tests)
    scripts/run-gpu-tests.sh --bin "$bin" 2>&1 | tee "$out/gpu-tests.log"
    ;;
  bench)
    {
      for dt in bf16 f32; do
        "$bin/mamba2" bench --device cuda --dtype $dt --ssd 8x2048x24x64x128 --ssd 2x4096x80x64x128 --repeats 20
      done
      "$bin/mamba2" bench --model "$models/130m" --device cuda --prefill 2048 --decode-batch 1,16,64,256 \
        --decode-tokens 64 --repeats 5 --decode-profile
      "$bin/mamba2" bench --model "$models/130m" --device cuda --dtype f32 --prefill 2048 --decode-batch 1,16 \
        --decode-tokens 64 --repeats 3
      if [ "${BIG:-0}" = 1 ]; then
        [ -d "$models/2.7b" ] || "$bin/mamba2" init --preset 2.7b --dtype bf16 --out "$models/2.7b" > /dev/null
        "$bin/mamba2" bench --model "$models/2.7b" --device cuda --prefill 2048 --decode-batch 1,16 \
          --decode-tokens 32 --repeats 3 --decode-profile
      fi
      if [ -d .anchors ] && [ "${ANCHORS:-1}" = 1 ]; then
        PYTHONUNBUFFERED=1 python3 bench/mamba_ssm_golden.py
        PYTHONUNBUFFERED=1 OUT="$out" python3 .anchors/mamba_ssm_gpu.py ${ANCHOR_PARTS:-ssd infer}
      fi
    } 2>&1 | tee "$out/gpu-bench.log"
    ;;
  serve)
    # The server on the GPU: greedy text through it equals generate's, miss and cache hit; then
    # bench/serve_bench.py.
    cp tests/fixtures/tokenizer/gpt-neox-20b.json "$models/130m/tokenizer.json"
    {
      prompt="In the beginning God created the heaven and the earth. And the earth was without form, and void"
      want="$("$bin/mamba2" generate --model "$models/130m" --device cuda --prompt "$prompt" --greedy -n 32 \
              --ignore-eos --no-echo 2> /dev/null)"
      start_server 8181
      body="{\"prompt\": \"$prompt\", \"max_tokens\": 32, \"temperature\": 0, \"ignore_eos\": true}"
      for round in miss hit; do
        got="$(curl -s localhost:8181/v1/completions -d "$body" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["choices"][0]["text"]); print(j["usage"], file=sys.stderr)')"
        [ "$got" = "$want" ] && echo "server greedy text ($round) equals generate's" || echo "DIFFERS ($round): '$got' vs '$want'"
      done
      python3 bench/serve_bench.py --url http://127.0.0.1:8181 --label "h200 bf16" --levels 1,8,32,64 --requests 64 \
        --words 100-300 --max-tokens 64 --long-words 3000 --seed 0 --json "$out/serve_bench.json"
      # More requests a level (each level above C=1 lasts ~0.3 s with 64), greedy and sampled:
      # temperature 0.8, top_p 0.95, without top_k (whole rows of logits to the host's sampler) and
      # with top_k 40 (only each row's candidates come back).
      for t in 0 0.8 0.8:40; do
        timeout 150 python3 bench/serve_bench.py --url http://127.0.0.1:8181 --label "h200 bf16, temperature $t" \
          --levels 1,8,32,64 --requests 256 --words 100-300 --max-tokens 64 --long-words 0 --seed 1 \
          --temperature "${t%%:*}" --top-k "$([ "$t" != "${t#*:}" ] && echo "${t#*:}" || echo 0)" \
          --json "$out/serve_bench_t$t.json"
      done
      stop_server
      # The long prompt's miss without the prefix cache: one prefill, no state kept on the way.
      start_server 8182 --cache-bytes 0
      python3 bench/serve_bench.py --url http://127.0.0.1:8182 --label "h200 bf16, no cache" --levels "" --long-words 3000 \
        --seed 0 --json "$out/serve_bench_nocache.json"
      stop_server
    } 2>&1 | tee "$out/gpu-serve.log"
    ;;
  profile)
    ncu=(ncu --clock-control none --metrics gpu__time_duration.sum --csv)
    {
      # The second SSD call (the first is the warm-up), then one replayed decode step of 130m.
      "${ncu[@]}" --launch-skip 4 --launch-count 4 "$bin/mamba2" bench --device cuda --ssd 8x2048x24x64x128 --repeats 1
      "${ncu[@]}" --launch-skip 2000 --launch-count 160 "$bin/mamba2" bench --model "$models/130m" --device cuda \
        --prefill 16 --decode-batch 1 --decode-tokens 16 --repeats 1
      if [ "${BIG:-0}" = 1 ]; then  # one decode step of 2.7b
        [ -d "$models/2.7b" ] || "$bin/mamba2" init --preset 2.7b --dtype bf16 --out "$models/2.7b" > /dev/null
        "${ncu[@]}" --launch-skip 4000 --launch-count 400 "$bin/mamba2" bench --model "$models/2.7b" --device cuda \
          --prefill 16 --decode-batch 1 --decode-tokens 16 --repeats 1
      fi
    } > "$out/profile.csv" 2> "$out/profile.err"
    python3 - "$out/profile.csv" <<'PY'
import csv, sys, collections, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10 and r[-3] == "gpu__time_duration.sum"]
tot = collections.defaultdict(lambda: [0, 0.0])
for r in rows:
    # "void mamba2::cuda::(anonymous namespace)::step_kernel<...>(...)": the first name before < or (
    m = re.search(r"(\w+)\s*[<(]", r[4])
    name = m.group(1) if m else r[4][:60]
    v = float(r[-1].replace(",", ""))
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0}.get(r[-2], 1e3)
    tot[name][0] += 1; tot[name][1] += v * scale
for name, (n, us) in sorted(tot.items(), key=lambda kv: -kv[1][1]):
    print(f"{name:60s} {n:5d} launches {us:10.1f} us")
PY
    ;;
esac
