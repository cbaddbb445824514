#!/usr/bin/env bash
# The portable release build: a folder that runs on a Linux x86-64 machine without our Debian
# packages (a GPU machine with only the NVIDIA driver and the CUDA 13 runtime libraries, say).
#   scripts/package-portable.sh [OUT]        (default OUT: dist/mamba2-portable)
# It builds without -march=native (the SIMD kernels are still chosen at run time), with the CUDA
# backend when nvcc is here, and copies next to the binaries every shared library they need
# except the C runtime (glibc, libstdc++, libgcc_s: every Linux has them). cuBLASLt (500 MB) is
# not among them: the binaries open it when they first use the GPU (cuda/linear.cu), from the
# machine's CUDA installation, and run on the CPU without it. They find lib/ through their rpath
# ($ORIGIN/../lib), then /usr/local/cuda/lib64 for cuBLASLt.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist/mamba2-portable}"
build=build-portable
scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMAMBA2_NATIVE=OFF \
  '-DCMAKE_BUILD_RPATH=$ORIGIN/../lib;/usr/local/cuda/lib64;/usr/local/cuda/targets/x86_64-linux/lib'
cmake --build "$build" -j"$(nproc)"
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
cp "$build"/bin/* "$out/bin/"
for bin in "$out"/bin/*; do
  ldd "$bin" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*|libcuda.so*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
echo "portable build in $out: $(du -sh "$out" | cut -f1); run $out/bin/mamba2 --version there"
