// Helpers of the GPU tests: skip without a GPU (one line saying why), move tensors between the
// devices, random fills. The CPU kernels are the oracle of the CUDA kernels.
#pragma once
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/tensor.h"
#include "cuda/runtime.h"

#define MAMBA2_REQUIRE_GPU()                                                                 \
  do {                                                                                       \
    if (::mamba2::cuda::device_count() == 0)                                                 \
      GTEST_SKIP() << "GPU tests skipped: no CUDA GPU (" << ::mamba2::cuda::no_gpu_reason() << ")"; \
  } while (0)

namespace mamba2::test {

inline Tensor random_tensor(Shape shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(std::move(shape));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = u(rng);
  return t;
}

inline Tensor to_gpu(const Tensor& t, DType dtype = DType::F32) { return t.to(Device::CUDA, dtype); }
inline Tensor to_cpu(const Tensor& t) { return t.to(Device::CPU, DType::F32); }

// A GPU tensor filled with NaN, so that elements a kernel fails to write show.
inline Tensor gpu_nan(Shape shape) {
  Tensor h = Tensor::empty(shape);
  std::fill_n(h.data(), h.numel(), std::nanf(""));
  return to_gpu(h);
}

// t rounded through `dtype` and back (what the GPU sees of an fp32 input stored in bf16/f16).
inline Tensor rounded(const Tensor& t, DType dtype) { return t.to(Device::CPU, dtype).to(Device::CPU, DType::F32); }

inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace mamba2::test
