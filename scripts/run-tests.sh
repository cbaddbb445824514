#!/usr/bin/env bash
# Builds and runs the test suite on the CPU paths a user's machine may take, whatever CPU this is:
#  1. optimised build (-march=native): the whole suite, with the best kernels this CPU runs;
#  2. the kernel and batch-invariance tests again under each OpenBLAS kernel family this CPU can
#     execute (our own kernels' instruction sets are looped over inside those tests); then the
#     kernel tests on arm64, cross-built and run under qemu-aarch64 (NEON and scalar kernels:
#     scripts/test-arm64.sh);
#  3. a portable build (no -march=native) with clang under AddressSanitizer +
#     UndefinedBehaviorSanitizer (bad-input tests must fail cleanly, never touch memory they
#     shouldn't): the whole suite with our kernels forced to AVX2 and OpenBLAS to Haswell where the
#     CPU has them, i.e. what an AVX2-only machine runs; its objects are first checked to hold no
#     AVX-512 instruction outside the AVX-512 kernel files, which only run when chosen (the
#     row-count sweeps at the model's widths and three long numeric runs are left to step 1);
#  4. every fuzz target of that build for 5 seconds on its corpus (scripts/fuzz.sh), one per core.
# It ends by printing which paths were covered.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
covered=()
# kernels_of / blas_of [NAME=value ...] BINARY: the kernels that binary chooses in that environment.
kernels_of() { env "$@" --version | sed -n 's/^kernels: \([a-z0-9]*\).*/\1/p'; }
blas_of() { env "$@" --version | sed -n 's/^blas: .*, \([A-Za-z0-9]*\) kernels.*/\1/p'; }

# Unity builds of the tests and the CLI (CMake's CMAKE_UNITY_BUILD; the library opts out): their
# files share the heavy templates (GoogleTest, nlohmann-json, CLI11, fmt), which then compile once
# per batch: 45% less compile time for those targets, and CI compiles everything twice. Batches of
# 20 files (the tests in two, one a core; the CLI in one): 21% less than CMake's 8 for the tests.
# Without a GPU (CI's machines) the .cu files compile to sm_90a PTX only and unoptimised (NVVM and
# the host compiler at -O0): every kernel and its sm_90 paths still go through nvcc's front end and
# NVVM, without the machine code no test here runs (ptxas for sm_90a and the compute_80 PTX: ~45 s
# of the build's critical path) and without the optimisers' time: the .cu objects took 149-154
# CPU-seconds to PTX at -O3, 60 at NVVM's -O1 (bench/RESULTS.md; causal_conv1d.cu's unrolled tap
# loops most), and ssd_scan.cu alone 17.6 s at -O1, 7.7 s at -O0. On a GPU machine the default
# targets at -O3 (whatever a run without one left in build/'s cache); scripts/run-gpu-tests.sh builds
# those too.
cuda_flags=(-UCMAKE_CUDA_ARCHITECTURES -DCMAKE_CUDA_FLAGS= -UCMAKE_CUDA_FLAGS_RELEASE)
if ! nvidia-smi -L > /dev/null 2>&1; then
  cuda_flags=(-DCMAKE_CUDA_ARCHITECTURES=90a-virtual "-DCMAKE_CUDA_FLAGS=-Xcicc -O0"
              "-DCMAKE_CUDA_FLAGS_RELEASE=-O0 -DNDEBUG")
fi
# The benchmark programs are left out (~60 CPU-seconds: no test runs them); package-portable.sh and
# run-gpu-tests.sh build every target.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=20 \
  "${cuda_flags[@]}"
# The official openai Python package, the server test's second client, from PyPI into a venv;
# without it (no network) that test skips and says so. Installed while the build runs (~15 s, most
# of it waiting on the network).
venv_pid=""
if ! build/venv/bin/python -c "import openai" 2> /dev/null; then
  { python3 -m venv build/venv && build/venv/bin/pip install -q --disable-pip-version-check openai; } &
  venv_pid=$!
fi
cmake --build build -j"$jobs" --target mamba2 mamba2_tests
# The instruction-set kernel files run only when chosen, but code of theirs that runs at load (a
# dynamic initializer) runs on every CPU: GCC once vectorised the row kernels' table with zmm
# registers, and the portable build died at start on AVX2-only machines. Their tables are constexpr.
at_load="$(find build/src -path '*/cpu/simd/*_avx*.o' -exec sh -c 'objdump -h "$1" | grep -q init_array && echo "$1"' _ {} \;)"
if [ -n "$at_load" ]; then
  echo "instruction-set kernel objects with code that runs at load: $at_load" >&2
  exit 1
fi
# cuBLASLt is opened at the first product on a GPU (cuda/linear.cu): linked, its 500 MB were loaded
# and relocated at every start (0.1 s a process: a third of this suite's time, CPU-only runs too).
if readelf -d build/bin/mamba2 build/bin/mamba2_tests | grep -q 'NEEDED.*libcublas'; then
  echo "the binaries link cuBLAS: it must be opened at run time (cuda/linear.cu)" >&2
  exit 1
fi
if [ -n "$venv_pid" ] && ! wait "$venv_pid"; then
  echo "could not install the openai package: Serve.TheOpenAIPackageGetsTheGeneratorsTexts will skip" >&2
fi
export MAMBA2_TEST_PYTHON="$PWD/build/venv/bin/python"
ctest --test-dir build --output-on-failure -j"$jobs"
covered+=("optimised build (-march=native), whole suite: our kernels $(kernels_of build/bin/mamba2), OpenBLAS $(blas_of build/bin/mamba2)")

flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
families=()
if has avx2 fma; then families+=(Haswell Zen); fi
if has avx512f avx512bw avx512vl avx512dq avx512cd; then families+=(SkylakeX); fi
if has avx512f avx512bw avx512vl avx512dq avx512cd avx512_bf16; then families+=(Cooperlake); fi
filter='LinearTiled.*:LinearRows.*:BatchInvariance.*:ModelEquivalence*:GradOps.*:GradModel*'
filter+=':Generate.BatchOfDifferentLengthsEqualsEachPromptAlone:Generate.PromptsFileRunsOneBatchLikeSingleRuns'
default_blas="$(blas_of build/bin/mamba2)"
for family in "${families[@]}"; do
  got="$(blas_of OPENBLAS_CORETYPE=$family build/bin/mamba2)"
  if [ "${got,,}" != "${family,,}" ]; then
    echo "OPENBLAS_CORETYPE=$family gave OpenBLAS kernels '$got'" >&2
    exit 1
  fi
  [ "${family,,}" = "${default_blas,,}" ] && continue  # the whole suite ran with these already
  echo "== kernel and batch-invariance tests with OpenBLAS's $family kernels"
  OPENBLAS_CORETYPE=$family OMP_WAIT_POLICY=passive build/bin/mamba2_tests --gtest_filter="$filter" --gtest_brief=1
  covered+=("optimised build, kernel and batch-invariance tests: OpenBLAS $family kernels; our kernels: every one this CPU runs")
done

JOBS="$jobs" scripts/test-arm64.sh
covered+=("arm64 cross build (Debian's aarch64 toolchain) under qemu-aarch64, kernel tests (tests/test_linear.cpp): our kernels $(cat build-arm64/tested-isas)")

scripts/configure-sanitizer-build.sh build-asan
# The fuzz targets (step 4) are built here too: their small files fill the core that the last test
# batches leave idle. (The benchmarks need no sanitizer.)
cmake --build build-asan -j"$jobs" --target mamba2 mamba2_tests fuzz_all
asan_env=()
if has avx2 fma; then
  # (llvm-objdump: 5 s for these objects, GNU objdump 18 s.)
  stray="$(find build-asan/src -name '*.o' ! -name 'tile_avx512.cpp.o' ! -name 'rows_avx512.cpp.o' ! -name 'q8x8_avx512vnni.cpp.o' \
    ! -name 'bf16xbf16_avx512bf16.cpp.o' \
    -exec llvm-objdump -d --no-show-raw-insn {} + | grep -c zmm || true)"
  if [ "$stray" != 0 ]; then
    echo "the portable build has $stray AVX-512 instructions outside the AVX-512 kernel files" >&2
    exit 1
  fi
  asan_env=(MAMBA2_ISA=avx2 OPENBLAS_CORETYPE=Haswell)
fi
# The sweeps of row counts at the 130m model's widths are left to the optimised build (which runs
# them under every instruction set): under the sanitizer they took 70 (fp32) and 47 (int8)
# CPU-seconds of CI's 15 minutes; the same sweeps at a small width and the kernels' edges run here.
heavy='^(LinearRows\.DoNotDependOnTheRowCountAt130mWidths|BatchInvariance\.At130mWidthUnderEveryIsa'
heavy+='|LinearQ[48]x8\.RowsDoNotDependOnTheRowCountAndPrefillIsDecodeAt130mWidths'
# Three long numeric runs go the same way (14, 8 and 11 CPU-seconds under the sanitizer): the
# batched generation's bits against each prompt alone, the 65,536-token prefill against the
# recurrence, and the shipped model's bits per byte on its held-out book.
heavy+='|Generate\.BatchOfDifferentLengthsEqualsEachPromptAlone|ModelLong\.Prefill65536TokensMatchesRecurrence'
heavy+='|ShippedModel\.HeldOutBookUnderOnePointSixBitsPerByte)$'
env "${asan_env[@]}" ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp" \
  UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan --output-on-failure -j"$jobs" -E "$heavy"
covered+=("portable build under ASan+UBSan, whole suite but the 130m-width row-count sweeps and three long numeric runs: our kernels $(kernels_of "${asan_env[@]}" build-asan/bin/mamba2), OpenBLAS $(blas_of "${asan_env[@]}" build-asan/bin/mamba2)")

FUZZ_JOBS="$jobs" scripts/fuzz.sh 5
covered+=("fuzz targets under ASan+UBSan, 5 s each, $jobs at a time: $(ls fuzz/fuzz_*.cpp | wc -l) targets")

echo "== covered on this CPU ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //')):"
printf '  %s\n' "${covered[@]}"
