#include "core/dtype.h"

#include <algorithm>
#include <cmath>

#include "mamba2/error.h"

namespace mamba2 {

size_t dtype_size(DType dtype) {
  if (dtype == DType::Q8_0) fail("[dtype] Q8_0 elements come in blocks of 32, not one by one");
  return dtype == DType::F32 ? 4 : 2;
}

size_t dtype_bytes(DType dtype, size_t n) {
  if (dtype != DType::Q8_0) return n * dtype_size(dtype);
  if (n % kQ8BlockSize) fail("[dtype] Q8_0 takes whole blocks of 32 elements, not {}", n);
  return n / kQ8BlockSize * sizeof(Q8Block);
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::Q8_0: return "Q8_0";
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
    for (int i = 0; i < kQ8BlockSize; ++i) dst[b * kQ8BlockSize + size_t(i)] = d * float(src[b].q[i]);
  }
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

}  // namespace

void convert_to_f32(DType dtype, const void* src, float* dst, size_t n) {
  if (n == 0) return;  // an empty tensor's pointers may be null, which memcpy must not be given
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
    case DType::Q8_0: {
      const size_t blocks = dtype_bytes(dtype, n) / sizeof(Q8Block);
      const auto* q8 = static_cast<const Q8Block*>(src);
      constexpr size_t kBatch = 1024;
#pragma omp parallel for schedule(static) if (blocks > 4 * kBatch)
      for (size_t b = 0; b < blocks; b += kBatch)
        dequantize_q8(q8 + b, dst + b * kQ8BlockSize, std::min(kBatch, blocks - b));
      return;
    }
  }
}

void convert_from_f32(DType dtype, const float* src, void* dst, size_t n) {
  if (n == 0) return;
  auto* bytes = static_cast<unsigned char*>(dst);
  switch (dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t b = f32_to_bf16(src[i]);
        std::memcpy(bytes + 2 * i, &b, 2);
      }
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t b = f32_to_f16(src[i]);
        std::memcpy(bytes + 2 * i, &b, 2);
      }
      return;
    case DType::Q8_0: {
      const size_t blocks = dtype_bytes(dtype, n) / sizeof(Q8Block);
#pragma omp parallel for schedule(static) if (blocks > (1 << 12))
      for (size_t b = 0; b < blocks; ++b) {
        const float* x = src + b * kQ8BlockSize;
        float amax = 0.0f;
        for (int i = 0; i < kQ8BlockSize; ++i) amax = std::max(amax, std::fabs(x[i]));
        Q8Block blk;
        blk.d = f32_to_f16(amax / 127.0f);
        const float d = f16_to_f32(blk.d);
        for (int i = 0; i < kQ8BlockSize; ++i)
          blk.q[i] = int8_t(d > 0.0f ? std::clamp(std::round(x[i] / d), -127.0f, 127.0f) : 0.0f);
        std::memcpy(bytes + b * sizeof(Q8Block), &blk, sizeof(blk));
      }
      return;
    }
  }
}

}  // namespace mamba2
