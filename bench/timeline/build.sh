#!/usr/bin/env bash
# Builds the CUPTI timeline library (cupti_timeline.cpp) into OUT (default build-timeline/),
# beside a copy of the toolkit's libcupti for a machine that has only the driver. Use:
#   CUDA_INJECTION64_PATH=OUT/libtimeline.so TIMELINE_OUT=t.tsv PROGRAM ...
#   python3 bench/timeline/gaps.py t.tsv
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-build-timeline}"
cuda="${CUDA_HOME:-/usr/local/cuda}"
mkdir -p "$out"
cp -L "$cuda/lib/libcupti.so.13" "$out/" 2>/dev/null || cp -L "$cuda"/lib64/libcupti.so.* "$out/"
g++ -O2 -std=c++17 -shared -fPIC -I"$cuda/include" bench/timeline/cupti_timeline.cpp -o "$out/libtimeline.so" \
  -L"$out" -l:libcupti.so.13 -Wl,-rpath,'$ORIGIN'
echo "built $out/libtimeline.so"
