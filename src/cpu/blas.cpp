// OpenBLAS picks its kernels once, when it loads, from the CPU's family and model. Debian 12's
// 0.3.21 does not know recent server CPUs and falls back to Prescott kernels (SSE3) there: 1.9×
// slower SSD chunk products on an AVX-512 Xeon (bench/RESULTS.md). Before the first product, a
// CPU it did not recognise gets the kernels its instruction sets run, through the DYNAMIC_ARCH
// build's own re-initialisation (weak symbols: any other BLAS, or a newer OpenBLAS that knows
// the CPU, is left as it is). OPENBLAS_CORETYPE set by the user always wins.
#include "cpu/blas.h"

#include <cstdlib>
#include <string_view>

extern "C" {
void gotoblas_dynamic_init() __attribute__((weak));
void gotoblas_dynamic_quit() __attribute__((weak));
}

namespace mamba2::cpu {

namespace {

// The OpenBLAS kernels this CPU runs that beat pre-AVX2 ones, or null.
const char* core_for_this_cpu() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;
}

void choose_core() {
  if (std::getenv("OPENBLAS_CORETYPE") || !gotoblas_dynamic_init || !gotoblas_dynamic_quit) return;
  const std::string_view now = openblas_get_corename();
  for (std::string_view known : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"})
    if (now == known) return;
  const char* core = core_for_this_cpu();
  if (!core) return;
  setenv("OPENBLAS_CORETYPE", core, 1);  // what gotoblas_dynamic_init reads
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  unsetenv("OPENBLAS_CORETYPE");
}

}  // namespace

void ensure_blas_core() {
  static const bool chosen = (choose_core(), true);
  (void)chosen;
}

}  // namespace mamba2::cpu
