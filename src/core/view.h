// A row-major matrix view with a row stride, so that ops can address column slices of a wider
// buffer (z | xBC | dt of in_proj's output) without copies.
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/tensor.h"

namespace mamba2 {

struct MatView {
  float* data = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  Device device = Device::CPU;

  // A tensor as (dim 0, everything else), contiguous.
  static MatView of(Tensor& t) {
    const int64_t cols = t.numel() / std::max<int64_t>(t.dim(0), 1);
    return {t.data(), t.dim(0), cols, cols, t.device()};
  }
  MatView cols_slice(int64_t begin, int64_t count) const { return {data + begin, rows, count, ld, device}; }
  MatView rows_slice(int64_t begin, int64_t count) const { return {data + begin * ld, count, cols, ld, device}; }
  float* row(int64_t r) const { return data + r * ld; }
};

}  // namespace mamba2
