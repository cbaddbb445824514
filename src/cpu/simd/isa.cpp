#include "cpu/simd/isa.h"

#include <atomic>
#include <cstdlib>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "mamba2/error.h"

namespace mamba2::cpu::simd {

namespace {

#if defined(__x86_64__)
// F16C (the row kernels' fp16 scales): CPUID leaf 1, ECX bit 29; GCC 12's __builtin_cpu_supports
// does not know it.
bool f16c() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
}
#endif

bool supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__)
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c();
    case Isa::Avx512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") && f16c();
#endif
#if defined(__aarch64__)
    case Isa::Neon: return true;  // Advanced SIMD (with fused multiply-add) is part of ARMv8-A
#endif
    default: return false;
  }
}

Isa initial_isa() {
  if (const char* env = std::getenv("MAMBA2_ISA"); env && *env) return parse_isa(env);
  return available_isas().front();
}

std::atomic<int> g_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Neon: return "neon";
  }
  return "?";
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Scalar})
    if (supported(isa)) out.push_back(isa);
  return out;
}

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Scalar}) {
    if (name != isa_name(isa)) continue;
    if (!supported(isa)) fail("[isa] MAMBA2_ISA={}: this CPU does not support it", name);
    return isa;
  }
  fail("[isa] MAMBA2_ISA={} is not one of avx512, avx2, neon, scalar", name);
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v < 0) {
    v = int(initial_isa());
    int expected = -1;
    if (!g_isa.compare_exchange_strong(expected, v)) v = expected;
  }
  return Isa(v);
}

void set_isa(Isa isa) {
  if (!supported(isa)) fail("[isa] {} is not supported by this CPU", isa_name(isa));
  g_isa.store(int(isa), std::memory_order_release);
}

bool cpu_has_avx512_vnni() {
#if defined(__x86_64__)
  // Asked once per linear call: CPUID (in supported) traps to the hypervisor in a VM, ~1 µs.
  static const bool has = supported(Isa::Avx512) && __builtin_cpu_supports("avx512vnni");
  return has;
#else
  return false;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
  static const bool has =
      supported(Isa::Avx512) && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

std::string compiled_isa_extensions() {
  std::string s;
  auto add = [&](const char* name) { s += s.empty() ? name : std::string(" ") + name; };
#if defined(__AVX512F__)
  add("avx512f");
#endif
#if defined(__AVX512BW__)
  add("avx512bw");
#endif
#if defined(__AVX512VL__)
  add("avx512vl");
#endif
#if defined(__AVX2__)
  add("avx2");
#endif
#if defined(__FMA__)
  add("fma");
#endif
#if defined(__F16C__)
  add("f16c");
#endif
#if defined(__SSE4_2__)
  add("sse4.2");
#endif
#if defined(__SSE2__)
  add("sse2");
#endif
#if defined(__ARM_NEON)
  add("neon");
#endif
#if defined(__ARM_FEATURE_SVE)
  add("sve");
#endif
  return s.empty() ? "none" : s;
}

}  // namespace mamba2::cpu::simd
