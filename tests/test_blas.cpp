// OpenBLAS runs kernels of the CPU's instruction sets even on a CPU it does not recognise
// (src/cpu/blas.cpp): never its pre-AVX2 fallbacks where AVX2 and FMA are there.
#include <cblas.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "cpu/blas.h"

namespace mamba2 {

TEST(Blas, KernelsOfTheCpusInstructionSets) {
  if (std::getenv("OPENBLAS_CORETYPE")) GTEST_SKIP() << "OPENBLAS_CORETYPE chooses the kernels here";
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) GTEST_SKIP() << "no AVX2 + FMA";
  cpu::ensure_blas_core();
  const std::string core = openblas_get_corename();
  EXPECT_TRUE(core == "Haswell" || core == "Zen" || core == "SkylakeX" || core == "Cooperlake" ||
              core == "SapphireRapids")
      << "OpenBLAS runs its " << core << " kernels on a CPU with AVX2 and FMA";
#else
  GTEST_SKIP() << "x86-64 only";
#endif
}

}  // namespace mamba2
