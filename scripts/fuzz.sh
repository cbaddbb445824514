#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) in the sanitizer build (build-asan, shared with the tests:
# clang, ASan + UBSan) and runs each for the given number of seconds on its corpus: the committed
# seeds (fuzz/corpus/<target>) plus what earlier runs found (build-asan/fuzz-corpus/<target>). A
# finding stops its target and leaves the input in build-asan/findings/; the script then exits
# non-zero. Each target's libFuzzer output goes to build-asan/fuzz-logs/<target>.log.
#   scripts/fuzz.sh [SECONDS] [TARGET ...]        (default: 60 seconds, every target)
#   FUZZ_JOBS=N runs N targets at a time. FUZZ_TIMEOUT=S: an input running past S seconds is a
#   finding (default 10; raise it for runs at low priority beside other work, where a starved
#   process can take that long over an input that runs in a second alone).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.cpp; do t="$(basename "$f" .cpp)"; targets+=("${t#fuzz_}"); done
fi
b=build-asan
scripts/configure-sanitizer-build.sh "$b" > /dev/null
cmake --build "$b" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
mkdir -p "$b/findings" "$b/fuzz-logs"
# One target: its libFuzzer output to fuzz-logs/<target>.log; non-zero on a finding.
run_one() {
  local t="$1" dict=()
  mkdir -p "$b/fuzz-corpus/$t"
  case "$t" in config|train_config|trainer_state|safetensors|safetensors_index|tokenizer_load|token_corpus|state|serve_request)
    dict=(-dict=fuzz/json.dict) ;;
  chat_template) dict=(-dict=fuzz/chat_template.dict) ;;
  esac
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$b/bin/fuzz_$t" "$b/fuzz-corpus/$t" "fuzz/corpus/$t" "${dict[@]}" \
    -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$b/findings/$t-" > "$b/fuzz-logs/$t.log" 2>&1
}
# FUZZ_JOBS targets at a time (default 1; CI runs one per core).
lanes="${FUZZ_JOBS:-1}"
failed=()
for ((i = 0; i < ${#targets[@]}; i += lanes)); do
  pids=()
  batch=("${targets[@]:i:lanes}")
  for t in "${batch[@]}"; do
    echo "== fuzz_$t for ${secs}s"
    run_one "$t" &
    pids+=($!)
  done
  for k in "${!batch[@]}"; do
    t="${batch[$k]}"
    if ! wait "${pids[$k]}"; then
      failed+=("$t")
      tail -40 "$b/fuzz-logs/$t.log"
    fi
    grep -E "^#[0-9]+.*DONE" "$b/fuzz-logs/$t.log" || true
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "findings in: ${failed[*]} (inputs in $b/findings/)" >&2
  exit 1
fi
