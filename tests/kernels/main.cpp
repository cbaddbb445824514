// The main of mamba2_kernel_tests (the kernel tests alone, MAMBA2_KERNELS_ONLY): names the
// instruction sets the tests loop over and the one chosen by default (MAMBA2_ISA honoured), so
// that a run under emulation (scripts/test-arm64.sh: qemu-aarch64) shows that the NEON kernels
// were the ones checked. Not part of mamba2_tests (tests/CMakeLists.txt globs tests/*.cpp only).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "cpu/simd/isa.h"

int main(int argc, char** argv) {
  namespace simd = mamba2::cpu::simd;
  testing::InitGoogleTest(&argc, argv);
  if (GTEST_FLAG_GET(list_tests)) return RUN_ALL_TESTS();  // gtest_discover_tests reads this output
  std::string isas;
  for (simd::Isa isa : simd::available_isas()) isas += std::string(isas.empty() ? "" : " ") + simd::isa_name(isa);
  std::printf("kernel ISAs tested: %s (default: %s; compiled for: %s)\n", isas.c_str(),
              simd::isa_name(simd::active_isa()), simd::compiled_isa_extensions().c_str());
  std::fflush(stdout);
  return RUN_ALL_TESTS();
}
