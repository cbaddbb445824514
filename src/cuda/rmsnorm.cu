// RMSNorm with the residual add, and the gated grouped RMSNorm, on the GPU, forward and backward:
// one block per row (per row and group), fp32 sums reduced in a fixed order (thread strides, then
// a fixed tree), so that a row's result never depends on the other rows of the launch. The
// backward's weight gradients are summed over rows in fixed chunks, in double (add_column_partials),
// as the CPU sums them in row order: with r the normed row, s = 1/sqrt(mean(r²) + eps):
//   d_r = s·(d_out∘w) − r·s³·Σ(d_out∘w∘r)/d,    d_w += Σ_rows d_out∘r·s
// A backward block takes a chunk of kChunkRows rows in order, one after the other as the forward's
// blocks take one, and sums its columns' d_w terms over them from the values it holds in registers
// (rows of up to kThreads·16 values): a second kernel reading the rows again for d_w took as long
// as the backward itself (7 % of a 130m training step; H200, 2026-12-04). add_rmsnorm's loads the
// next row while it sums the current one (its rows loop is latency-bound): 2.01 → 1.74 ms a 130m
// step on the H100; the same in the gated one, 3.09 → 3.72 ms, cost it occupancy (111 registers).
#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace mamba2::cuda {

namespace {

constexpr int kThreads = 256;
// Rows a backward block takes: a 16k-token batch gets 1,024 blocks, enough rows in flight to
// stream at the memory's bandwidth.
constexpr int64_t kChunkRows = 16;

template <class Out>
__global__ void add_rmsnorm_kernel(const float* residual, const float* h, float* sum, const float* w, Out* out,
                                   int64_t d, float eps) {
  const float* r0 = residual + int64_t(blockIdx.x) * d;
  float* r = sum + int64_t(blockIdx.x) * d;
  const float* hr = h ? h + int64_t(blockIdx.x) * d : nullptr;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    float v = r0[i];
    if (hr) v += hr[i];
    if (hr || r != r0) r[i] = v;
    ss += v * v;
  }
  const float scale = rsqrtf(block_sum<kThreads>(ss) / float(d) + eps);
  Out* o = out + int64_t(blockIdx.x) * d;
  for (int64_t i = threadIdx.x; i < d; i += kThreads) store_f32(o + i, r[i] * scale * w[i]);
}

// Block (row, group): v = y·silu(z) over the group's gs channels, kept in registers between the
// sum and the output when they fit (gs ≤ kThreads·H; H = 0: read twice), so y and z are read and
// silu computed once. H is the smallest that fits: registers decide how many rows an SM holds
// (24 held took 95 registers and a quarter of the threads). The sum's order is the same for every
// H: thread i adds channels i, i+kThreads, ... in order.
template <int H, class Out, class Y>
__global__ void gated_rmsnorm_kernel(const Y* __restrict__ y, int64_t ldy, const Y* __restrict__ z,
                                     int64_t ldz, const float* __restrict__ w, Out* __restrict__ out, int64_t ldo,
                                     int64_t gs, float eps) {
  const int64_t row = blockIdx.x, c0 = int64_t(blockIdx.y) * gs;
  const Y* yr = y + row * ldy + c0;
  const Y* zr = z + row * ldz + c0;
  Out* o = out + row * ldo + c0;
  if constexpr (H > 0) {
    float yv[H], zv[H];
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < gs) {
        yv[j] = load_f32(yr + i);
        zv[j] = load_f32(zr + i);
      }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < gs) {
        yv[j] *= silu(zv[j]);
        ss += yv[j] * yv[j];
      }
    }
    const float scale = rsqrtf(block_sum<kThreads>(ss) / float(gs) + eps);
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < gs) store_f32(o + i, yv[j] * scale * w[c0 + i]);
    }
  } else {
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
      const float v = load_f32(yr + i) * silu(load_f32(zr + i));
      ss += v * v;
    }
    const float scale = rsqrtf(block_sum<kThreads>(ss) / float(gs) + eps);
    for (int64_t i = threadIdx.x; i < gs; i += kThreads)
      store_f32(o + i, load_f32(yr + i) * silu(load_f32(zr + i)) * scale * w[c0 + i]);
  }
}

// The backward of a row (or group) of d values: s = 1/√(mean of squares + eps) and k = s³·dot/d
// (dot = Σ go·w·v), so that the normed input's gradient is d_v = s·go·w − v·k. The rows and the
// row kernels share these, so that both give the same bits.
struct NormGrad {
  float s, k;
};
__device__ __forceinline__ NormGrad norm_grad(float ss, float dot, int64_t d, float eps) {
  const float s = rsqrtf(ss / float(d) + eps);
  return {s, s * s * s * dot / float(d)};
}
__device__ __forceinline__ float add_norm_input_grad(NormGrad f, float go, float w, float r) {
  return f.s * go * w - r * f.k;
}
// Gated (v = y·silu(z)): d_y = d_v·silu(z), d_z = d_v·y·silu'(z), and v itself.
struct GatedGrads {
  float dy, dz, v;
};
__device__ __forceinline__ GatedGrads gated_norm_input_grads(NormGrad f, float go, float w, float y, float z) {
  float sz, dsz;
  silu_with_grad(z, sz, dsz);
  const float dv = f.s * (go * w) - y * sz * f.k;
  return {dv * sz, dv * y * dsz, y * sz};
}

// Block per chunk of rows, d ≤ kThreads·H: d_res += s·go∘w − r·s³·dot/d, and partial[chunk] the
// chunk's Σ go∘r·s over its rows in order, in double. The sums' order is that of the H = 0 kernel.
template <int H>
__global__ void add_rmsnorm_backward_rows_kernel(const float* __restrict__ residual, const float* __restrict__ w,
                                                 const float* __restrict__ d_out, float* __restrict__ d_res,
                                                 double* __restrict__ partial, int64_t n, int64_t d, float eps) {
  const int64_t chunk = blockIdx.x, r1 = min(n, (chunk + 1) * kChunkRows);
  float wv[H];
  double acc[H];
#pragma unroll
  for (int j = 0; j < H; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * kThreads;
    wv[j] = i < d ? w[i] : 0.0f;
    acc[j] = 0.0;
  }
  // Row `row`'s residual and d_out for this thread's channels (zeros past d, or past the chunk).
  const auto load = [&](int64_t row, float(&rv)[H], float(&gv)[H]) {
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      const bool in = i < d && row < r1;
      rv[j] = in ? residual[row * d + i] : 0.0f;
      gv[j] = in ? d_out[row * d + i] : 0.0f;
    }
  };
  float rv[H], gv[H];
  load(chunk * kChunkRows, rv, gv);
  for (int64_t row = chunk * kChunkRows; row < r1; ++row) {
    // The next row's loads go out before this row's sums, which hide their latency.
    float rn[H], gn[H];
    load(row + 1, rn, gn);
    float* dr = d_res + row * d;
    float ss = 0.0f, dot = 0.0f;
#pragma unroll
    for (int j = 0; j < H; ++j) {
      ss += rv[j] * rv[j];
      dot += gv[j] * wv[j] * rv[j];
    }
    block_sum2<kThreads>(ss, dot);
    const NormGrad f = norm_grad(ss, dot, d, eps);
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < d) {
        dr[i] += add_norm_input_grad(f, gv[j], wv[j], rv[j]);
        acc[j] += double(gv[j]) * double(rv[j]) * double(f.s);
      }
      rv[j] = rn[j], gv[j] = gn[j];
    }
  }
#pragma unroll
  for (int j = 0; j < H; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * kThreads;
    if (i < d) partial[chunk * d + i] = acc[j];
  }
}

// Block per row, d > kThreads·16: d_res += s·go∘w − r·s³·dot/d, and the row's s for the weight
// gradient (norm_weight_partials_kernel's).
__global__ void add_rmsnorm_backward_kernel(const float* residual, const float* w, const float* d_out, float* d_res,
                                            float* rstd, int64_t d, float eps) {
  const int64_t row = blockIdx.x;
  const float* r = residual + row * d;
  const float* go = d_out + row * d;
  float* dr = d_res + row * d;
  float ss = 0.0f, dot = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    ss += r[i] * r[i];
    dot += go[i] * w[i] * r[i];
  }
  const NormGrad f = norm_grad(block_sum<kThreads>(ss), block_sum<kThreads>(dot), d, eps);
  for (int64_t i = threadIdx.x; i < d; i += kThreads) dr[i] += add_norm_input_grad(f, go[i], w[i], r[i]);
  if (threadIdx.x == 0) rstd[row] = f.s;
}

// Block (column tile, row chunk): partial[chunk][c] = Σ over the chunk's rows in order of
// d_out·v·s, v = the normed input (gated: y·silu(z)), s its row's (row and group's) scale.
template <bool gated, class A>
__global__ void norm_weight_partials_kernel(const A* a, int64_t lda, const A* z, int64_t ldz,
                                            const A* d_out, int64_t ldd, const float* rstd, int64_t n, int64_t d,
                                            int64_t ngroups, double* partial) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (c >= d) return;
  const int64_t r0 = chunk * kGradRows, r1 = min(n, r0 + kGradRows), g = gated ? c / (d / ngroups) : 0;
  double acc = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    float v = load_f32(a + r * lda + c);
    if constexpr (gated) v *= silu(load_f32(z + r * ldz + c));
    acc += double(load_f32(d_out + r * ldd + c)) * double(v) * double(rstd[r * ngroups + g]);
  }
  partial[chunk * d + c] = acc;
}

// Block (chunk of rows, group), gs ≤ kThreads·H: per row v = y·silu(z); d_v = s·go∘w − v·s³·dot/gs;
// d_y = d_v·silu(z), d_z = d_v·y·silu'(z); and partial[chunk] the chunk's Σ go∘v·s over its rows in
// order, in double. y, z and go are held in registers between the sums and the outputs (as the
// forward); the sums' order is that of the H = 0 kernel. d_y in Dy and d_z in Dz: fp32, or rounded
// once to the compute dtype where only a product (d_z: in_proj's backward) or the SSD backward,
// which rounds its operands to it, reads them. Up to 6 values a thread (the 130m's 1536 channels)
// it runs 4 blocks an SM in 64 registers: the rows loop waits on its loads, and 3 blocks took 7 %
// longer (H100, bench/RESULTS.md).
template <int H, class Dy, class Dz, class Y>
__global__ void __launch_bounds__(kThreads, H <= 6 ? 4 : 1)
    gated_rmsnorm_backward_rows_kernel(const Y* __restrict__ y, int64_t ldy, const Y* __restrict__ z, int64_t ldz,
                                       const float* __restrict__ w, const Y* __restrict__ d_out, int64_t ldd,
                                       Dy* __restrict__ d_y, int64_t lddy, Dz* __restrict__ d_z, int64_t lddz,
                                       double* __restrict__ partial, int64_t n, int64_t gs, float eps) {
  const int64_t chunk = blockIdx.x, c0 = int64_t(blockIdx.y) * gs, r1 = min(n, (chunk + 1) * kChunkRows);
  const int64_t d = gs * gridDim.y;
  float wv[H];
  double acc[H];
#pragma unroll
  for (int j = 0; j < H; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * kThreads;
    wv[j] = i < gs ? w[c0 + i] : 0.0f;
    acc[j] = 0.0;
  }
  for (int64_t row = chunk * kChunkRows; row < r1; ++row) {
    const Y* yr = y + row * ldy + c0;
    const Y* zr = z + row * ldz + c0;
    const Y* go = d_out + row * ldd + c0;
    float yv[H], zv[H], gov[H];
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      yv[j] = i < gs ? load_f32(yr + i) : 0.0f;
      zv[j] = i < gs ? load_f32(zr + i) : 0.0f;
      gov[j] = i < gs ? load_f32(go + i) : 0.0f;
    }
    float ss = 0.0f, dot = 0.0f;
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < gs) {
        const float v = yv[j] * silu(zv[j]);
        ss += v * v;
        dot += gov[j] * wv[j] * v;
      }
    }
    const NormGrad f = norm_grad(block_sum<kThreads>(ss), block_sum<kThreads>(dot), gs, eps);
    Dy* dy = d_y + row * lddy + c0;
    Dz* dz = d_z + row * lddz + c0;
#pragma unroll
    for (int j = 0; j < H; ++j) {
      const int64_t i = threadIdx.x + int64_t(j) * kThreads;
      if (i < gs) {
        const GatedGrads gg = gated_norm_input_grads(f, gov[j], wv[j], yv[j], zv[j]);
        store_f32(dy + i, gg.dy);
        store_f32(dz + i, gg.dz);
        acc[j] += double(gov[j]) * double(gg.v) * double(f.s);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < H; ++j) {
    const int64_t i = threadIdx.x + int64_t(j) * kThreads;
    if (i < gs) partial[chunk * d + c0 + i] = acc[j];
  }
}

// Block (row, group), gs > kThreads·16: as the rows kernel, reading y, z and go twice, and the
// row's s for the weight gradient (norm_weight_partials_kernel's).
template <class Dy, class Dz, class Y>
__global__ void gated_rmsnorm_backward_kernel(const Y* __restrict__ y, int64_t ldy, const Y* __restrict__ z,
                                              int64_t ldz, const float* __restrict__ w,
                                              const Y* __restrict__ d_out, int64_t ldd, Dy* __restrict__ d_y,
                                              int64_t lddy, Dz* __restrict__ d_z, int64_t lddz,
                                              float* __restrict__ rstd, int64_t gs, float eps) {
  const int64_t row = blockIdx.x, g = blockIdx.y, c0 = g * gs;
  const Y* yr = y + row * ldy + c0;
  const Y* zr = z + row * ldz + c0;
  const Y* go = d_out + row * ldd + c0;
  const float* wg = w + c0;
  Dy* dy = d_y + row * lddy + c0;
  Dz* dz = d_z + row * lddz + c0;
  float ss = 0.0f, dot = 0.0f;
  for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
    const float v = load_f32(yr + i) * silu(load_f32(zr + i));
    ss += v * v;
    dot += load_f32(go + i) * wg[i] * v;
  }
  const NormGrad f = norm_grad(block_sum<kThreads>(ss), block_sum<kThreads>(dot), gs, eps);
  for (int64_t i = threadIdx.x; i < gs; i += kThreads) {
    const GatedGrads gg = gated_norm_input_grads(f, load_f32(go + i), wg[i], load_f32(yr + i), load_f32(zr + i));
    store_f32(dy + i, gg.dy);
    store_f32(dz + i, gg.dz);
  }
  if (threadIdx.x == 0) rstd[row * gridDim.y + g] = f.s;
}

// The weight gradient from the rows' scales: partials by chunk, then their ordered sum.
template <bool gated, class A>
void add_norm_weight_grad(const A* a, int64_t lda, const A* z, int64_t ldz, const A* d_out, int64_t ldd,
                          const float* rstd, int64_t n, int64_t d, int64_t ngroups, float* d_w, const char* op) {
  const int64_t chunks = ceil_div(n, kGradRows);
  auto partial = allocate(size_t(chunks * d) * sizeof(double), "norm weight gradient partials");
  constexpr int kCols = 128;
  const dim3 grid(unsigned(ceil_div(d, kCols)), unsigned(chunks));
  norm_weight_partials_kernel<gated, A><<<grid, kCols, 0, stream()>>>(a, lda, z, ldz, d_out, ldd, rstd, n, d,
                                                                       ngroups, static_cast<double*>(partial.get()));
  check_launch(op);
  add_column_partials(static_cast<const double*>(partial.get()), d, chunks, d, d_w, op);
}

}  // namespace

void add_rmsnorm_forward(const float* residual, const float* h, float* sum, const float* w, void* out,
                         DType out_dtype, int64_t n, int64_t d, float eps) {
  if (n == 0) return;
  with_dtype(out_dtype, "rmsnorm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    add_rmsnorm_kernel<T><<<unsigned(n), kThreads, 0, stream()>>>(residual, h, sum, w, static_cast<T*>(out), d, eps);
  });
  check_launch("rmsnorm");
}

void gated_rmsnorm_forward(const void* y, DType y_dtype, int64_t ldy, const void* z_in, int64_t ldz, const float* w,
                           void* out, DType out_dtype, int64_t ldo, int64_t n, int64_t d, int64_t ngroups, float eps) {
  if (n == 0) return;
  dim3 grid{unsigned(n), unsigned(ngroups), 1u};
  with_dtype(out_dtype, "gated_rmsnorm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    with_f32_or<T>(y, y_dtype, "gated_rmsnorm", "y", "the output's dtype", [&](auto* yt) {
      using Y = std::remove_const_t<std::remove_pointer_t<decltype(yt)>>;
      const Y* z = static_cast<const Y*>(z_in);
      const int64_t gs = d / ngroups;
      const auto run = [&](auto kernel) {
        kernel<<<grid, kThreads, 0, stream()>>>(yt, ldy, z, ldz, w, static_cast<T*>(out), ldo, gs, eps);
      };
      if (gs <= 4 * kThreads) run(gated_rmsnorm_kernel<4, T, Y>);
      else if (gs <= 6 * kThreads) run(gated_rmsnorm_kernel<6, T, Y>);
      else if (gs <= 8 * kThreads) run(gated_rmsnorm_kernel<8, T, Y>);
      else if (gs <= 16 * kThreads) run(gated_rmsnorm_kernel<16, T, Y>);
      else run(gated_rmsnorm_kernel<0, T, Y>);
    });
  });
  check_launch("gated_rmsnorm");
}

// The chunks' partials of a rows kernel, then their ordered sum into d_w.
template <class F>
void with_chunk_partials(int64_t n, int64_t d, float* d_w, const char* op, F&& launch) {
  const int64_t chunks = ceil_div(n, kChunkRows);
  auto partial = allocate(size_t(chunks * d) * sizeof(double), "norm weight gradient partials");
  launch(unsigned(chunks), static_cast<double*>(partial.get()));
  check_launch(op);
  add_column_partials(static_cast<const double*>(partial.get()), d, chunks, d, d_w, op);
}

void add_rmsnorm_backward(const float* residual, const float* w, const float* d_out, float* d_residual, float* d_w,
                          int64_t n, int64_t d, float eps) {
  if (n == 0) return;
  if (d <= 16 * kThreads) {
    with_chunk_partials(n, d, d_w, "rmsnorm", [&](unsigned chunks, double* partial) {
      const auto run = [&](auto kernel) {
        kernel<<<chunks, kThreads, 0, stream()>>>(residual, w, d_out, d_residual, partial, n, d, eps);
      };
      if (d <= 4 * kThreads) run(add_rmsnorm_backward_rows_kernel<4>);
      else if (d <= 8 * kThreads) run(add_rmsnorm_backward_rows_kernel<8>);
      else if (d <= 12 * kThreads) run(add_rmsnorm_backward_rows_kernel<12>);
      else run(add_rmsnorm_backward_rows_kernel<16>);
    });
    return;
  }
  auto rstd = allocate(size_t(n) * sizeof(float), "rmsnorm row scales");
  auto* s = static_cast<float*>(rstd.get());
  add_rmsnorm_backward_kernel<<<unsigned(n), kThreads, 0, stream()>>>(residual, w, d_out, d_residual, s, d, eps);
  check_launch("rmsnorm");
  add_norm_weight_grad<false>(residual, d, static_cast<const float*>(nullptr), 0, d_out, d, s, n, d, 1, d_w, "rmsnorm");
}

void gated_rmsnorm_backward(const void* y_in, DType y_dtype, int64_t ldy, const void* z_in, int64_t ldz, const float* w,
                            const void* d_out_in, int64_t ldd, void* d_y, DType dy_dtype, int64_t lddy, void* d_z,
                            DType dz_dtype, int64_t lddz, float* d_w, int64_t n, int64_t d, int64_t ngroups,
                            float eps) {
  if (n == 0) return;
  const int64_t gs = d / ngroups;
  // With d_y as Dy*, y (and z and d_out, its dtype) as Y*, d_z as Dz*.
  const auto run = [&](auto* dy, auto* y, auto* dz) {
    using Dy = std::remove_pointer_t<decltype(dy)>;
    using Y = std::remove_const_t<std::remove_pointer_t<decltype(y)>>;
    using Dz = std::remove_pointer_t<decltype(dz)>;
    const Y *z = static_cast<const Y*>(z_in), *d_out = static_cast<const Y*>(d_out_in);
    if (gs <= 16 * kThreads) {
      with_chunk_partials(n, d, d_w, "gated_rmsnorm", [&](unsigned chunks, double* partial) {
        const auto launch = [&](auto kernel) {
          kernel<<<dim3(chunks, unsigned(ngroups)), kThreads, 0, stream()>>>(y, ldy, z, ldz, w, d_out, ldd, dy, lddy,
                                                                             dz, lddz, partial, n, gs, eps);
        };
        if (gs <= 4 * kThreads) launch(gated_rmsnorm_backward_rows_kernel<4, Dy, Dz, Y>);
        else if (gs <= 6 * kThreads) launch(gated_rmsnorm_backward_rows_kernel<6, Dy, Dz, Y>);
        else if (gs <= 8 * kThreads) launch(gated_rmsnorm_backward_rows_kernel<8, Dy, Dz, Y>);
        else if (gs <= 12 * kThreads) launch(gated_rmsnorm_backward_rows_kernel<12, Dy, Dz, Y>);
        else launch(gated_rmsnorm_backward_rows_kernel<16, Dy, Dz, Y>);
      });
      return;
    }
    auto rstd = allocate(size_t(n * ngroups) * sizeof(float), "gated_rmsnorm row scales");
    auto* s = static_cast<float*>(rstd.get());
    gated_rmsnorm_backward_kernel<Dy, Dz, Y><<<dim3(unsigned(n), unsigned(ngroups)), kThreads, 0, stream()>>>(
        y, ldy, z, ldz, w, d_out, ldd, dy, lddy, dz, lddz, s, gs, eps);
    check_launch("gated_rmsnorm");
    add_norm_weight_grad<true>(y, ldy, z, ldz, d_out, ldd, s, n, d, ngroups, d_w, "gated_rmsnorm");
  };
  with_dtype(dy_dtype, "gated_rmsnorm", [&](auto* ytag) {
    using Dy = std::remove_pointer_t<decltype(ytag)>;
    with_f32_or<Dy>(y_in, y_dtype, "gated_rmsnorm", "y", "the output's dtype", [&](auto* y) {
      with_dtype(dz_dtype, "gated_rmsnorm",
                 [&](auto* ztag) { run(static_cast<Dy*>(d_y), y, static_cast<decltype(ztag)>(d_z)); });
    });
  });
}

}  // namespace mamba2::cuda
