#!/usr/bin/env bash
# One call on the GPU machine (the device tool), over a checkout that carries the portable build
# (scripts/package-portable.sh), packed as $PORTABLE (default .devrun/portable.tar.xz, a tar of
# mamba2-portable/{bin,lib}) and, for the baseline, .anchors/ (shared/anchors/README.md).
#   bench/gpu_session.sh tests    the GPU suite (scripts/run-gpu-tests.sh --bin dist/bin)
#   bench/gpu_session.sh bench    mamba2 bench on the GPU beside mamba_ssm, same machine, same run
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
case "${1:-tests}" in
  tests)
    scripts/run-gpu-tests.sh --bin "$bin" 2>&1 | tee "$out/gpu-tests.log"
    ;;
  bench)
    models=/tmp/models
    mkdir -p "$models"
    "$bin/mamba2" init --preset 130m --dtype bf16 --out "$models/130m" > /dev/null
    {
      for dt in bf16 f32; do
        "$bin/mamba2" bench --device cuda --dtype $dt --ssd 8x2048x24x64x128 --ssd 2x4096x80x64x128 --repeats 20
      done
      "$bin/mamba2" bench --model "$models/130m" --device cuda --prefill 2048 --decode-batch 1,16,64,256 \
        --decode-tokens 64 --repeats 5
      "$bin/mamba2" bench --model "$models/130m" --device cuda --dtype f32 --prefill 2048 --decode-batch 1,16 \
        --decode-tokens 64 --repeats 3
      if [ -d .anchors ] && [ "${ANCHORS:-1}" = 1 ]; then
        PYTHONUNBUFFERED=1 python3 bench/mamba_ssm_golden.py
        PYTHONUNBUFFERED=1 OUT="$out" python3 .anchors/mamba_ssm_gpu.py ${ANCHOR_PARTS:-ssd infer}
      fi
    } 2>&1 | tee "$out/gpu-bench.log"
    ;;
esac
