#include "mamba2/version.h"

#include <cblas.h>
#include <fmt/format.h>

#include "cpu/blas.h"
#include "cpu/simd/bf16xbf16.h"
#include "cpu/simd/isa.h"
#include "cpu/simd/q8x8.h"
#include "cuda/runtime.h"
#include "ops/ops.h"

namespace mamba2 {

std::string version_info() {
  namespace simd = cpu::simd;
  std::string avail;
  for (auto isa : simd::available_isas()) avail += fmt::format("{}{}", avail.empty() ? "" : " ", simd::isa_name(isa));
  cpu::ensure_blas_core();
  std::string blas = openblas_get_config();
  while (!blas.empty() && blas.back() == ' ') blas.pop_back();
  std::string gpu = "not built (no nvcc at configure time, or -DMAMBA2_CUDA=OFF)";
  if (cuda::built()) {
    const int n = cuda::device_count();
    gpu = n == 0 ? "built; no GPU here (" + cuda::no_gpu_reason() + ")"
                 : fmt::format("built; {} GPU(s), the first: {}", n, cuda::device_description(0));
  }
  const auto int8_line = [&] {
    const bool q8 = ops::int8_activations(DType::Q8_0), q4 = ops::int8_activations(DType::Q4_0);
    if (!q8 && !q4) return std::string("none (fp32 activations for q8 and q4 weights)");
    return fmt::format("{} weights, {} kernels", q8 && q4 ? "q8 and q4" : q8 ? "q8" : "q4",
                       simd::int8_kernels(simd::active_isa()).name);
  };
  // Not ops::bf16_rounded_activations: asked for where the kernels are missing it refuses, and the
  // version is what tells the user so.
  const auto bf16_line = [&]() -> std::string {
    const simd::Bf16Kernels* t = simd::bf16_kernels(simd::active_isa());
    const ops::Bf16Activations a = ops::bf16_activations();
    if (a == ops::Bf16Activations::Bf16 && !t) return "asked for, but these kernels have none (AVX512_BF16 needed)";
    const bool on = t && (a == ops::Bf16Activations::Bf16 || (a == ops::Bf16Activations::Default && t->default_on));
    return on ? fmt::format("bf16 weights, {} kernels", t->name) : "none (fp32 activations for bf16 weights)";
  };
  return fmt::format(
      "mamba2 {}\n"
      "build: {} ({})\n"
      "kernels: {} (this CPU runs: {}; MAMBA2_ISA chooses)\n"
      "int8 activations: {} (MAMBA2_Q8_ACTIVATIONS chooses)\n"
      "bf16 activations: {} (MAMBA2_BF16_ACTIVATIONS chooses)\n"
      "blas: {}, {} kernels (SSD chunk products, training; OPENBLAS_CORETYPE chooses)\n"
      "cuda: {}\n",
      MAMBA2_VERSION, MAMBA2_BUILD_TARGET, simd::compiled_isa_extensions(), simd::isa_name(simd::active_isa()), avail,
      int8_line(), bf16_line(),
      blas, openblas_get_corename(), gpu);
}

}  // namespace mamba2
