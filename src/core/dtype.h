// Element types of checkpoint tensors and their conversion to fp32 (all compute is fp32), and the
// CPU's 8-bit weight format.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace mamba2 {

// Q8_0: llama.cpp's q8_0 blocks, in memory only (never a checkpoint's element type): every 32
// consecutive elements of a row as one fp16 scale d and 32 int8 values q, element = d·q. A
// product of an fp16 and an int8 is exact in fp32, so a kernel that widens the blocks as it reads
// them computes bit for bit what the fp32 kernel does on the dequantized weights.
enum class DType { F32, F16, BF16, Q8_0 };

struct Q8Block {
  uint16_t d;  // fp16 scale
  int8_t q[32];
};
static_assert(sizeof(Q8Block) == 34);
constexpr int64_t kQ8BlockSize = 32;

// Bytes of one element (fails for Q8_0, whose elements come in blocks) and of n elements (a
// multiple of 32 for Q8_0).
size_t dtype_size(DType dtype);
size_t dtype_bytes(DType dtype, size_t n);
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

// `blocks` Q8_0 blocks to fp32 (d·q), on the calling thread.
void dequantize_q8(const Q8Block* src, float* dst, size_t blocks);
// Converts n elements of `dtype` at `src` (little-endian, any alignment; Q8_0 2-byte aligned) to fp32.
void convert_to_f32(DType dtype, const void* src, float* dst, size_t n);
// Converts n fp32 values to `dtype` at `dst`. Q8_0 (n a multiple of 32): each block's scale is
// max|x| / 127 rounded to fp16, q = x / d rounded to nearest (ties away), within ±127.
void convert_from_f32(DType dtype, const float* src, void* dst, size_t n);

}  // namespace mamba2
