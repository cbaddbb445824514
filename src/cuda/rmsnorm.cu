// RMSNorm with the residual add, and the gated grouped RMSNorm, on the GPU: one block per row
// (per row and group), fp32 sums reduced in a fixed order (thread strides, then a fixed tree), so
// that a row's result never depends on the other rows of the launch.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256;

template <class Out>
__global__ void add_rmsnorm_kernel(float* residual, const float* h, const float* w, Out* out, int64_t d, float eps) {
  float* r = residual + int64_t(blockIdx.x) * d;
  const float* hr = h ? h + int64_t(blockIdx.x) * d : nullptr;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    float v = r[i];
    if (hr) {
      v += hr[i];
      r[i] = v;
    }
    ss += v * v;
  }
  const float scale = rsqrtf(block_sum<kThreads>(ss) / float(d) + eps);
  Out* o = out + int64_t(blockIdx.x) * d;
  for (int64_t i = threadIdx.x; i < d; i += kThreads) store_f32(o + i, r[i] * scale * w[i]);
}

// Block (row, group): v = y·silu(z) over the group's gs channels, kept in registers between the
// sum and the output when they fit (gs ≤ kThreads·kHeld), so y and z are read and silu computed
// once. The sum's order is the same either way: thread i adds channels i, i+kThreads, ... in order.
constexpr int kHeld = 24;

template <class Out>
__global__ void gated_rmsnorm_kernel(const float* y, int64_t ldy, const float* z, int64_t ldz, const float* w,
                                     Out* out, int64_t ldo, int64_t gs, float eps) {
  const int64_t row = blockIdx.x, c0 = int64_t(blockIdx.y) * gs;
  const float* yr = y + row * ldy + c0;
  const float* zr = z + row * ldz + c0;
  Out* o = out + row * ldo + c0;
  if (gs <= int64_t(kThreads) * kHeld) {
    float yv[kHeld], zv[kHeld];
#pragma unroll
    for (int j = 0; j < kHeld; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < gs) {
        yv[j] = yr[i];
        zv[j] = zr[i];
      }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kHeld; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < gs) {
        yv[j] *= silu(zv[j]);
        ss += yv[j] * yv[j];
      }
    }
    const float scale = rsqrtf(block_sum<kThreads>(ss) / float(gs) + eps);
#pragma unroll
    for (int j = 0; j < kHeld; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < gs) store_f32(o + i, yv[j] * scale * w[c0 + i]);
    }
    return;
  }
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
    const float v = yr[i] * silu(zr[i]);
    ss += v * v;
  }
  const float scale = rsqrtf(block_sum<kThreads>(ss) / float(gs) + eps);
  for (int64_t i = threadIdx.x; i < gs; i += kThreads) store_f32(o + i, yr[i] * silu(zr[i]) * scale * w[c0 + i]);
}

}  // namespace

void add_rmsnorm_forward(float* residual, const float* h, const float* w, void* out, DType out_dtype, int64_t n,
                         int64_t d, float eps) {
  if (n == 0) return;
  with_dtype(out_dtype, "rmsnorm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    add_rmsnorm_kernel<T><<<unsigned(n), kThreads, 0, stream()>>>(residual, h, w, static_cast<T*>(out), d, eps);
  });
  check_launch("rmsnorm");
}

void gated_rmsnorm_forward(const float* y, int64_t ldy, const float* z, int64_t ldz, const float* w, void* out,
                           DType out_dtype, int64_t ldo, int64_t n, int64_t d, int64_t ngroups, float eps) {
  if (n == 0) return;
  dim3 grid{unsigned(n), unsigned(ngroups), 1u};
  with_dtype(out_dtype, "gated_rmsnorm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    gated_rmsnorm_kernel<T><<<grid, kThreads, 0, stream()>>>(y, ldy, z, ldz, w, static_cast<T*>(out), ldo,
                                                             d / ngroups, eps);
  });
  check_launch("gated_rmsnorm");
}

}  // namespace mamba2::cuda
