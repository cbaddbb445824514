#!/usr/bin/env bash
# Configures DIR (default build-asan) as the sanitizer build that the tests and the fuzz targets
# share: clang, AddressSanitizer + UndefinedBehaviorSanitizer at -O1 (line tables only: file and
# line in the reports, 15% less compile time than -g), libFuzzer instrumentation,
# portable (no -march=native); the tests, the CLI and the library as unity builds of 20 files (the
# tests and the CLI as in scripts/run-tests.sh; the library only here: src/CMakeLists.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B "${1:-build-asan}" -G Ninja -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-gline-tables-only -O1" \
  -DCMAKE_CXX_COMPILER=clang++ -DMAMBA2_SANITIZE=ON -DMAMBA2_FUZZ=ON -DMAMBA2_NATIVE=OFF -DMAMBA2_CUDA=OFF \
  -DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=20 -DMAMBA2_UNITY_LIBRARY=ON
