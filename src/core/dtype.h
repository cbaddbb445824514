// Element types of checkpoint tensors and their conversion to fp32 (all compute is fp32), and the
// CPU's block-quantized weight formats (8 and 4 bits).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace mamba2 {

// The CPU's block-quantized weight formats, in memory (and, written by `mamba2 quantize`, in
// checkpoints: io/safetensors.h), llama.cpp's block layouts: each row's consecutive 32 elements
// as one block with an fp16 scale d.
//   Q8_0: 32 int8 values q, element = d·q (d = max|w| / 127, as llama.cpp's q8_0).
//   Q4_0: 16 bytes of 4-bit values q, element j < 16 in the low nibble of qs[j] and element
//         j ≥ 16 in the high nibble of qs[j − 16], element = d·(q − 8). d is the one of a small
//         search that gives the block the least squared error (llama.cpp's q4_0 takes d =
//         extreme / −8 without a search).
// A product of an fp16 scale and a small integer is exact in fp32, so a kernel that widens the
// blocks as it reads them computes bit for bit what the fp32 kernel does on the dequantized
// weights.
enum class DType { F32, F16, BF16, Q8_0, Q4_0 };

// Q8_0 or Q4_0: elements come in blocks of 32 (a row's length must be a multiple of it).
inline bool is_quantized(DType dtype) { return dtype == DType::Q8_0 || dtype == DType::Q4_0; }
constexpr int64_t kQuantBlock = 32;

struct Q8Block {
  uint16_t d;  // fp16 scale
  int8_t q[kQuantBlock];
};
static_assert(sizeof(Q8Block) == 34);

struct Q4Block {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(Q4Block) == 18);

// Bytes of one element (fails for Q8_0 and Q4_0, whose elements come in blocks) and of n
// elements (a multiple of 32 for those).
size_t dtype_size(DType dtype);
size_t dtype_bytes(DType dtype, size_t n);
std::string_view dtype_name(DType dtype);  // "F32", "F16", "BF16" (safetensors spelling), "Q8_0", "Q4_0"
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

// `blocks` Q8_0 / Q4_0 blocks to fp32, on the calling thread.
void dequantize_q8(const Q8Block* src, float* dst, size_t blocks);
void dequantize_q4(const Q4Block* src, float* dst, size_t blocks);
// Converts n elements of `dtype` at `src` (little-endian, any alignment; Q8_0 and Q4_0 2-byte
// aligned) to fp32.
void convert_to_f32(DType dtype, const void* src, float* dst, size_t n);
// Converts n fp32 values to `dtype` at `dst` (Q8_0, Q4_0: n a multiple of 32, block by block).
void convert_from_f32(DType dtype, const float* src, void* dst, size_t n);
// One Q8_0 block of 32 values: scale max|x| / 127 rounded to fp16, q = x / d rounded to nearest
// (ties away), within ±127.
Q8Block quantize_q8_block(const float* x);
// One Q4_0 block of 32 values: among scales d = e / s, e the value of largest magnitude and s in
// {−8, −7.875, …, −5} ∪ {7, 6.875, …, 4.5}, then the least-squares scale of the best one's q, each
// rounded to fp16 first and q = x·(1/d) rounded to nearest, + 8, within [0, 15]: the one of least
// squared error (the first on ties). All-zero blocks get d = 0.
Q4Block quantize_q4_block(const float* x);

}  // namespace mamba2
