#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "ops/check.h"
#include "ops/ops.h"

#include <cmath>

namespace mamba2::ops {

void top_k(MatView x, int64_t cols, std::span<const int32_t> k, std::span<const float> temperature, int64_t cap,
           int32_t* ids, float* values, int32_t* counts) {
  check_shape("top_k", "x", x, x.rows, x.cols, x.device);
  check_dtype("top_k", "x", x.dtype, DType::F32);
  if (cols <= 0 || cols > x.cols) fail("[top_k] {} columns asked of rows of {}", cols, x.cols);
  if (int64_t(k.size()) != x.rows || int64_t(temperature.size()) != x.rows)
    fail("[top_k] {} rows, {} k and {} temperatures", x.rows, k.size(), temperature.size());
  if (cap < 1) fail("[top_k] room for {} candidates a row", cap);
  for (size_t r = 0; r < k.size(); ++r) {
    if (k[r] < 1 || k[r] > cols) fail("[top_k] k = {} for row {}: it must be in [1, {}]", k[r], r, cols);
    if (!(temperature[r] > 0.0f) || !std::isfinite(temperature[r]))
      fail("[top_k] temperature {} for row {}: it must be > 0", temperature[r], r);
  }
  if (x.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    auto k_dev = cuda::allocate(k.size_bytes(), "top_k k");
    auto t_dev = cuda::allocate(temperature.size_bytes(), "top_k temperatures");
    cuda::copy_to_device(k_dev.get(), k.data(), k.size_bytes());
    cuda::copy_to_device(t_dev.get(), temperature.data(), temperature.size_bytes());
    cuda::top_k_rows(x.data(), x.ld, x.rows, cols, static_cast<const int32_t*>(k_dev.get()),
                     static_cast<const float*>(t_dev.get()), cap, ids, values, counts);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::top_k_rows(x.data(), x.ld, x.rows, cols, k.data(), temperature.data(), cap, ids, values, counts);
}

}  // namespace mamba2::ops
