// Shape checks shared by the op front ends; messages start with the op name.
#pragma once
#include "core/view.h"
#include "mamba2/error.h"

namespace mamba2::ops {

inline void check_cpu(const char* op, Device d) {
  if (d != Device::CPU) fail("[{}] unsupported device", op);
}

inline void check_shape(const char* op, const char* what, const MatView& m, int64_t rows, int64_t cols) {
  if (m.rows != rows || m.cols != cols)
    fail("[{}] {} is ({}, {}), expected ({}, {})", op, what, m.rows, m.cols, rows, cols);
  if (m.ld < m.cols) fail("[{}] {} has row stride {} < {} columns", op, what, m.ld, m.cols);
  check_cpu(op, m.device);
}

inline void check_len(const char* op, const char* what, const Tensor& t, int64_t n) {
  if (t.numel() != n) fail("[{}] {} has {} elements, expected {}", op, what, t.numel(), n);
  check_cpu(op, t.device());
}

}  // namespace mamba2::ops
