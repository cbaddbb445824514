#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, fuzz/) in build-fuzz and runs each for the
# given number of seconds on its corpus: the committed seeds (fuzz/corpus/<target>) plus what
# earlier runs found (build-fuzz/corpus/<target>). A finding stops its target and leaves the input
# in build-fuzz/findings/; the script then exits non-zero. Stats go to build-fuzz/logs/.
#   scripts/fuzz.sh [SECONDS] [TARGET ...]        (default: 60 seconds, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.cpp; do t="$(basename "$f" .cpp)"; targets+=("${t#fuzz_}"); done
fi
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DMAMBA2_SANITIZE=ON -DMAMBA2_FUZZ=ON -DMAMBA2_NATIVE=OFF -DMAMBA2_BUILD_TESTS=OFF > /dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
mkdir -p build-fuzz/findings build-fuzz/logs
failed=()
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  dict=()
  case "$t" in config|train_config|safetensors|safetensors_index|tokenizer_load) dict=(-dict=fuzz/json.dict) ;; esac
  echo "== fuzz_$t for ${secs}s"
  if ! ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "build-fuzz/fuzz/fuzz_$t" "build-fuzz/corpus/$t" "fuzz/corpus/$t" "${dict[@]}" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="build-fuzz/findings/$t-" > "build-fuzz/logs/$t.log" 2>&1; then
    failed+=("$t")
    tail -40 "build-fuzz/logs/$t.log"
  fi
  grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "build-fuzz/logs/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "findings in: ${failed[*]} (inputs in build-fuzz/findings/)" >&2
  exit 1
fi
