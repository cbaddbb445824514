// Element types of checkpoint tensors and their conversion to fp32 (all compute is fp32).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace mamba2 {

enum class DType { F32, F16, BF16 };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // "F32", "F16", "BF16" (safetensors spelling)
// The command-line and config spelling: "f32", "bf16", "f16"; nullopt for anything else.
std::optional<DType> parse_dtype(std::string_view name);

inline float bf16_to_f32(uint16_t bits) {
  uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, NaN kept quiet.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float f);

// Converts n elements of `dtype` at `src` (little-endian, any alignment) to fp32.
void convert_to_f32(DType dtype, const void* src, float* dst, size_t n);
// Converts n fp32 values to `dtype` at `dst`.
void convert_from_f32(DType dtype, const float* src, void* dst, size_t n);

}  // namespace mamba2
