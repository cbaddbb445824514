// Shape, device and dtype checks shared by the op front ends; messages start with the op name.
// An op runs where its main operand is; every other operand must be on that device. CPU kernels
// compute in fp32 only.
#pragma once
#include "core/view.h"
#include "cuda/kernels.h"
#include "mamba2/error.h"

namespace mamba2::ops {

inline void check_device(const char* op, const char* what, Device got, Device want) {
  if (got != want) fail("[{}] {} is on the {}, the op runs on the {}", op, what, device_name(got), device_name(want));
}

// A GPU tensor in a build without the CUDA backend cannot be made; this guards the branch anyway.
[[noreturn]] inline void no_cuda_backend(const char* op) { fail("[{}] this build has no CUDA backend", op); }

inline void check_cpu(const char* op, Device d) { check_device(op, "an operand", d, Device::CPU); }

inline void check_dtype(const char* op, const char* what, DType got, DType want) {
  if (got != want) fail("[{}] {} is {}, expected {}", op, what, dtype_name(got), dtype_name(want));
}

// fp32, or where `narrow` (a GPU path of mixed-precision training) also the dtype of `other_name`,
// `other`: an activation some ops take rounded once.
inline void check_f32_or(const char* op, const char* what, DType got, bool narrow, const char* other_name,
                         DType other) {
  if (got == DType::F32 || (narrow && got == other)) return;
  fail("[{}] {} is {}, expected F32{}", op, what, dtype_name(got),
       narrow ? fmt::format(" or {}'s dtype, {}", other_name, dtype_name(other)) : "");
}

// An output that only feeds a projection (a gradient for its backward, as in_proj's d_zxbcdt or
// the head's d_logits, or its input, as the Mamba-1 scan's y): fp32, or on the GPU already in the
// projection's BF16 / F16, rounded once by the op that writes it.
inline void check_projection_operand_dtype(const char* op, const char* what, DType got, Device device) {
  if (got == DType::F32 || (device == Device::CUDA && (got == DType::BF16 || got == DType::F16))) return;
  fail("[{}] {} is {}, expected F32{}", op, what, dtype_name(got), device == Device::CUDA ? ", BF16 or F16" : "");
}

inline void check_shape(const char* op, const char* what, const MatView& m, int64_t rows, int64_t cols,
                        Device device = Device::CPU) {
  if (m.rows != rows || m.cols != cols)
    fail("[{}] {} is ({}, {}), expected ({}, {})", op, what, m.rows, m.cols, rows, cols);
  if (m.ld < m.cols) fail("[{}] {} has row stride {} < {} columns", op, what, m.ld, m.cols);
  check_device(op, what, m.device, device);
  if (device == Device::CPU) check_dtype(op, what, m.dtype, DType::F32);
}

inline void check_len(const char* op, const char* what, const Tensor& t, int64_t n, Device device = Device::CPU) {
  if (t.numel() != n) fail("[{}] {} has {} elements, expected {}", op, what, t.numel(), n);
  check_device(op, what, t.device(), device);
  check_dtype(op, what, t.dtype(), DType::F32);
}

// A tensor to warm into the GPU's L2 (a hint: nothing for none, or one not on the GPU).
inline cuda::L2Warm l2_warm(const Tensor* t) {
  if (!t || t->device() != Device::CUDA) return {};
  return {t->raw(), uint64_t(t->numel()) * dtype_size(t->dtype())};
}

}  // namespace mamba2::ops
