// What this binary is and what it runs on: version, the instruction sets it was compiled for,
// the SIMD kernels it chose for this CPU, and the BLAS kernels in use.
#pragma once
#include <string>

namespace mamba2 {

// Several lines, each "key: value", ending in a newline.
std::string version_info();

}  // namespace mamba2
