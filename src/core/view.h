// A row-major matrix view with a row stride, so that ops can address column slices of a wider
// buffer (z | xBC | dt of in_proj's output) without copies. It carries the element type and the
// device of the memory it points to.
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/tensor.h"
#include "mamba2/error.h"

namespace mamba2 {

struct MatView {
  void* ptr = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  Device device = Device::CPU;
  DType dtype = DType::F32;

  // A tensor as (dim 0, everything else), contiguous.
  static MatView of(Tensor& t) {
    const int64_t cols = t.numel() / std::max<int64_t>(t.dim(0), 1);
    return {t.raw(), t.dim(0), cols, cols, t.device(), t.dtype()};
  }
  // The elements as fp32 (fails for another dtype).
  float* data() const {
    if (dtype != DType::F32) fail("[view] a {} view read as F32", dtype_name(dtype));
    return static_cast<float*>(ptr);
  }
  MatView cols_slice(int64_t begin, int64_t count) const { return {at(0, begin), rows, count, ld, device, dtype}; }
  MatView rows_slice(int64_t begin, int64_t count) const { return {at(begin, 0), count, cols, ld, device, dtype}; }
  float* row(int64_t r) const { return data() + r * ld; }

 private:
  void* at(int64_t r, int64_t c) const {
    return ptr ? static_cast<char*>(ptr) + (r * ld + c) * int64_t(dtype_size(dtype)) : nullptr;
  }
};

}  // namespace mamba2
