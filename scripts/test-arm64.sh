#!/usr/bin/env bash
# Cross-builds for arm64 with Debian's aarch64 toolchain and multiarch arm64 packages
# (cmake/aarch64-linux-gnu.cmake; scripts/install-deps.sh installs them) and runs the tests under
# qemu-aarch64, where our kernels run as NEON and scalar:
#   scripts/test-arm64.sh        the kernel tests (CI): only the kernel layer is built
#                                (MAMBA2_KERNELS_ONLY, in build-arm64) and tests/test_linear.cpp
#                                run, every NEON tile and row kernel (f32, bf16, Q8_0, Q4_0)
#                                against the scalar reference and the documented summation orders;
#                                the row-count sweeps at the 130m model's widths (*At130mWidths, fp32
#                                and int8: ~70 s emulated) are left to --all, those at a small width run.
#   scripts/test-arm64.sh --all  the whole project (build-arm64-all) and the whole of mamba2_tests
#                                through ctest; the tests' `mamba2` runs are emulated too. Needs
#                                `scripts/install-deps.sh --arm64-all` first. On 2 cores: ~12 min
#                                to build, ~8 min of tests (7× the native suite's test time).
# JOBS (default: the core count) sets the build's and ctest's parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=kernels
case "${1:-}" in
  "") ;;
  --all) mode=all ;;
  *) echo "usage: $0 [--all]" >&2; exit 2 ;;
esac
jobs="${JOBS:-$(nproc)}"
for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" > /dev/null || { echo "$tool not found: run scripts/install-deps.sh" >&2; exit 1; }
done
# The loader and libraries of Debian's libc6:arm64 (see the toolchain file).
emu=(qemu-aarch64 -L /)
start=$SECONDS
phase() { echo "== arm64 ($mode): $1 [$((SECONDS - start)) s]"; }
configure=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake"
           -DMAMBA2_CUDA=OFF -DMAMBA2_NATIVE=OFF)

if [ "$mode" = kernels ]; then
  dir=build-arm64
  phase "configure and build the kernel layer and mamba2_kernel_tests in $dir"
  mkdir -p "$dir"
  cmake -S . -B "$dir" "${configure[@]}" -DMAMBA2_KERNELS_ONLY=ON > "$dir/configure.log" 2>&1 ||
    { cat "$dir/configure.log" >&2; exit 1; }
  cmake --build "$dir" -j"$jobs"
  # The NEON files must hold NEON code, not the scalar stubs they fall back to off aarch64.
  for f in tile_neon rows_neon; do
    obj="$dir/src/CMakeFiles/mamba2_kernels.dir/cpu/simd/$f.cpp.o"
    if [ "$(aarch64-linux-gnu-objdump -d "$obj" | grep -cE 'fmla[[:space:]]+v[0-9]+\.4s')" = 0 ]; then
      echo "$obj has no NEON fused multiply-add: the NEON kernels were not compiled" >&2
      exit 1
    fi
  done
  phase "run the kernel tests under qemu-aarch64"
  out="$(mktemp)"
  trap 'rm -f "$out"' EXIT
  OMP_WAIT_POLICY=passive "${emu[@]}" "$dir/bin/mamba2_kernel_tests" \
    --gtest_filter='-*At130mWidths' | tee "$out"
  # The first line names the instruction sets the tests looped over: NEON must be one.
  grep -q '^kernel ISAs tested: neon ' "$out" || { echo "the NEON kernels were not tested" >&2; exit 1; }
  sed -n 's/^kernel ISAs tested: \([a-z0-9 ]*[a-z0-9]\).*/\1/p' "$out" | head -1 > "$dir/tested-isas"
  phase "done: our kernels tested as $(cat "$dir/tested-isas")"
  exit 0
fi

dir=build-arm64-all
phase "configure and build everything in $dir"
mkdir -p "$dir"
if ! cmake -S . -B "$dir" "${configure[@]}" -DMAMBA2_KERNELS_ONLY=OFF > "$dir/configure.log" 2>&1; then
  cat "$dir/configure.log" >&2
  echo "configuring failed: the whole build needs scripts/install-deps.sh --arm64-all" >&2
  exit 1
fi
cmake --build "$dir" -j"$jobs"
# The tests run the CLI as a program of its own (MAMBA2_CLI): through qemu too.
cli="$PWD/$dir/bin/mamba2-qemu"
printf '#!/bin/sh\nexec %s "%s" "$@"\n' "${emu[*]}" "$PWD/$dir/bin/mamba2" > "$cli"
chmod +x "$cli"
export MAMBA2_CLI="$cli"
# The server test's second client (the openai package) where run-tests.sh installed it.
if [ -z "${MAMBA2_TEST_PYTHON:-}" ] && [ -x build/venv/bin/python ]; then
  export MAMBA2_TEST_PYTHON="$PWD/build/venv/bin/python"
fi
"$cli" --version
# The death tests of ModelApi run in "threadsafe" style: the child re-executes the test binary,
# which the kernel can only start for an arm64 binary where binfmt_misc hands it to qemu
# (qemu-user-binfmt); without that they fail with "Exec format error", so they are left out.
skip=()
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  skip=(-E '^ModelApi\.(Prefill|Decode)RejectsState')
  echo "no binfmt_misc entry for aarch64: leaving out the 4 re-executing death tests (${skip[1]})"
fi
phase "run mamba2_tests under qemu-aarch64 (ctest -j$jobs)"
ctest --test-dir "$dir" --output-on-failure -j"$jobs" "${skip[@]}"
phase "done: our kernels $("$cli" --version | sed -n 's/^kernels: \([a-z0-9]*\).*/\1/p') (and every other ISA in the kernel tests)"
