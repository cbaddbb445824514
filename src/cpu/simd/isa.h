// Which SIMD instruction set the hand-written CPU kernels run with. Chosen once at run time
// from what the CPU supports (the best), or from MAMBA2_ISA (avx512, avx2, neon, scalar) so
// that a machine can run, and the tests can check, a path slower than its best.
#pragma once
#include <string>
#include <vector>

namespace mamba2::cpu::simd {

enum class Isa { Scalar, Avx2, Avx512, Neon };

const char* isa_name(Isa isa);
// The instruction sets this CPU can run, best first; Scalar is always last.
std::vector<Isa> available_isas();
// The one in use: MAMBA2_ISA if set (an error naming it when unknown or not supported here),
// else the best available. Fixed at first use; set_isa changes it (tests and benchmarks).
Isa active_isa();
void set_isa(Isa isa);
Isa parse_isa(const std::string& name);  // "[isa]" error for an unknown or unsupported name
// What the compiler was allowed to use for the rest of the code (-march), e.g. "avx512f avx2 fma".
std::string compiled_isa_extensions();
// AVX512_VNNI (vpdpbusd) beside AVX-512F: the Q8_0 × int8 kernels' best path (cpu/simd/q8x8.h).
bool cpu_has_avx512_vnni();
// AVX512_BF16 (vdpbf16ps) and AVX512BW beside AVX-512F: the bf16 × bf16 kernels (cpu/simd/bf16xbf16.h).
bool cpu_has_avx512_bf16();

}  // namespace mamba2::cpu::simd
