#include "core/dtype.h"

#include <algorithm>
#include <cmath>

#include "mamba2/error.h"

namespace mamba2 {

size_t dtype_size(DType dtype) {
  if (is_quantized(dtype)) fail("[dtype] {} elements come in blocks of 32, not one by one", dtype_name(dtype));
  return dtype == DType::F32 ? 4 : 2;
}

size_t dtype_bytes(DType dtype, size_t n) {
  if (!is_quantized(dtype)) return n * dtype_size(dtype);
  if (n % kQuantBlock) fail("[dtype] {} takes whole blocks of 32 elements, not {}", dtype_name(dtype), n);
  return n / kQuantBlock * (dtype == DType::Q8_0 ? sizeof(Q8Block) : sizeof(Q4Block));
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
  }
  return "?";
}

std::optional<DType> parse_dtype(std::string_view name) {
  if (name == "f32") return DType::F32;
  if (name == "bf16") return DType::BF16;
  if (name == "f16") return DType::F16;
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  } else {
    // Subnormal (or zero): value is mant * 2^-24, exact in fp32.
    float f = std::ldexp(float(mant), -24);
    std::memcpy(&u, &f, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00;               // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00;              // rounds to inf
  if (abs < 0x38800000u) {                                   // subnormal half or zero
    float a;
    std::memcpy(&a, &abs, 4);
    return sign | uint16_t(std::nearbyint(a * 16777216.0f)); // a / 2^-24, ties to even
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);            // round to nearest even
  return sign | uint16_t((r - 0x38000000u) >> 13);
}

void dequantize_q8(const Q8Block* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b) {
    const float d = f16_to_f32(src[b].d);
    for (int i = 0; i < kQuantBlock; ++i) dst[b * kQuantBlock + size_t(i)] = d * float(src[b].q[i]);
  }
}

void dequantize_q4(const Q4Block* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b) {
    const float d = f16_to_f32(src[b].d);
    float* out = dst + b * kQuantBlock;
    for (int i = 0; i < 16; ++i) {
      out[i] = d * float(int(src[b].qs[i] & 15) - 8);
      out[i + 16] = d * float(int(src[b].qs[i] >> 4) - 8);
    }
  }
}

namespace {

// q = x·(1/d) rounded to nearest, + 8, within [0, 15] for the fp16 scale `h`, and the block's
// squared error (in fp32: it only ranks the candidates). Plain float code the compiler vectorises:
// quantizing a 130m model at load time runs this ~40 times a block.
float q4_with_scale(const float* x, uint16_t h, uint8_t* q) {
  const float d = f16_to_f32(h), id = d != 0.0f ? 1.0f / d : 0.0f;
  float v[32], err = 0.0f;
  for (int i = 0; i < 32; ++i) v[i] = std::min(std::max(std::nearbyint(x[i] * id) + 8.0f, 0.0f), 15.0f);
  for (int i = 0; i < 32; ++i) {
    const float e = x[i] - d * (v[i] - 8.0f);
    err += e * e;
  }
  for (int i = 0; i < 32; ++i) q[i] = uint8_t(v[i]);
  return err;
}

}  // namespace

Q8Block quantize_q8_block(const float* x) {
  float amax = 0.0f;
  for (int i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
  Q8Block blk;
  blk.d = f32_to_f16(amax / 127.0f);
  const float d = f16_to_f32(blk.d);
  for (int i = 0; i < kQuantBlock; ++i)
    blk.q[i] = int8_t(d > 0.0f ? std::clamp(std::round(x[i] / d), -127.0f, 127.0f) : 0.0f);
  return blk;
}

Q4Block quantize_q4_block(const float* x) {
  float extreme = 0.0f;
  for (int i = 0; i < 32; ++i)
    if (std::fabs(x[i]) > std::fabs(extreme)) extreme = x[i];
  Q4Block blk{};
  uint8_t q[32], trial[32];
  std::fill_n(q, 32, uint8_t(8));
  float best = q4_with_scale(x, 0, q);
  uint16_t best_h = 0;
  auto consider = [&](float d) {
    const uint16_t h = f32_to_f16(d);
    const float err = q4_with_scale(x, h, trial);
    if (err < best) {
      best = err;
      best_h = h;
      std::copy_n(trial, 32, q);
    }
  };
  if (extreme != 0.0f) {
    for (int s = 0; s <= 24; ++s) consider(extreme / (-8.0f + 0.125f * float(s)));
    for (int s = 0; s <= 20; ++s) consider(extreme / (7.0f - 0.125f * float(s)));
    double num = 0.0, den = 0.0;  // least squares for the best q: d = Σ x·(q−8) / Σ (q−8)²
    for (int i = 0; i < 32; ++i) {
      num += double(x[i]) * (int(q[i]) - 8);
      den += double((int(q[i]) - 8) * (int(q[i]) - 8));
    }
    if (den > 0.0) consider(float(num / den));
  }
  blk.d = best_h;
  for (int i = 0; i < 16; ++i) blk.qs[i] = uint8_t(q[i] | (q[i + 16] << 4));
  return blk;
}

namespace {

template <class ToF32>
void halves_to_f32(const unsigned char* bytes, float* dst, size_t n, ToF32 to_f32) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (size_t i = 0; i < n; ++i) {
    uint16_t b;
    std::memcpy(&b, bytes + 2 * i, 2);
    dst[i] = to_f32(b);
  }
}

// On several threads when many, as halves_to_f32: placing a model's weights converts gigabytes,
// and the first touch of each destination page (the kernel clearing it) then spreads too.
template <class FromF32>
void f32_to_halves(const float* src, unsigned char* bytes, size_t n, FromF32 from_f32) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (size_t i = 0; i < n; ++i) {
    const uint16_t b = from_f32(src[i]);
    std::memcpy(bytes + 2 * i, &b, 2);
  }
}

// n elements (whole blocks of 32) dequantized in batches of blocks, on several threads when many.
template <class Block>
void blocks_to_f32(const Block* src, float* dst, size_t n, void (*dequantize)(const Block*, float*, size_t)) {
  const size_t blocks = n / kQuantBlock;
  constexpr size_t kBatch = 1024;
#pragma omp parallel for schedule(static) if (blocks > 4 * kBatch)
  for (size_t b = 0; b < blocks; b += kBatch) dequantize(src + b, dst + b * kQuantBlock, std::min(kBatch, blocks - b));
}

// n fp32 values (whole blocks of 32) quantized block by block, on several threads when many.
template <class Block>
void f32_to_blocks(const float* src, void* dst, size_t n, Block (*quantize)(const float*)) {
  const size_t blocks = n / kQuantBlock;
  auto* bytes = static_cast<unsigned char*>(dst);
#pragma omp parallel for schedule(static) if (blocks > (1 << 10))
  for (size_t b = 0; b < blocks; ++b) {
    const Block blk = quantize(src + b * kQuantBlock);
    std::memcpy(bytes + b * sizeof(Block), &blk, sizeof(blk));
  }
}

}  // namespace

void convert_to_f32(DType dtype, const void* src, float* dst, size_t n) {
  if (n == 0) return;  // an empty tensor's pointers may be null, which memcpy must not be given
  if (is_quantized(dtype)) (void)dtype_bytes(dtype, n);  // whole blocks only
  const auto* bytes = static_cast<const unsigned char*>(src);
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16:
      halves_to_f32(bytes, dst, n, bf16_to_f32);
      return;
    case DType::F16:
      halves_to_f32(bytes, dst, n, f16_to_f32);
      return;
    case DType::Q8_0:
      blocks_to_f32(static_cast<const Q8Block*>(src), dst, n, dequantize_q8);
      return;
    case DType::Q4_0:
      blocks_to_f32(static_cast<const Q4Block*>(src), dst, n, dequantize_q4);
      return;
  }
}

void convert_from_f32(DType dtype, const float* src, void* dst, size_t n) {
  if (n == 0) return;
  if (is_quantized(dtype)) (void)dtype_bytes(dtype, n);  // whole blocks only
  auto* bytes = static_cast<unsigned char*>(dst);
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16:
      f32_to_halves(src, bytes, n, f32_to_bf16);
      return;
    case DType::F16:
      f32_to_halves(src, bytes, n, f32_to_f16);
      return;
    case DType::Q8_0:
      f32_to_blocks(src, dst, n, quantize_q8_block);
      return;
    case DType::Q4_0:
      f32_to_blocks(src, dst, n, quantize_q4_block);
      return;
  }
}

}  // namespace mamba2
