#include <utility>

#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

namespace {

cpu::SsdParams params(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, int64_t rows,
                      Device dev = Device::CPU) {
  const int64_t H = w.dt_bias.numel();
  if (w.headdim <= 0 || w.ngroups <= 0 || w.d_state <= 0 || H % w.ngroups != 0)
    fail("[ssd_scan] {} heads do not split into {} groups", H, w.ngroups);
  check_len("ssd_scan", "dt_bias", w.dt_bias, H, dev);
  check_len("ssd_scan", "A_log", w.A_log, H, dev);
  check_len("ssd_scan", "D", w.D, H, dev);
  check_shape("ssd_scan", "x", x, rows, H * w.headdim, dev);
  check_shape("ssd_scan", "B", B, rows, w.ngroups * w.d_state, dev);
  check_shape("ssd_scan", "C", C, rows, w.ngroups * w.d_state, dev);
  check_shape("ssd_scan", "dt", dt, rows, H, dev);
  check_dtype("ssd_scan", "dt", dt.dtype, DType::F32);
  for (const MatView* m : {&B, &C}) check_dtype("ssd_scan", "B and C", m->dtype, x.dtype);
  return {H, w.headdim, w.ngroups, w.d_state, w.dt_bias.data(), w.A_log.data(), w.D.data(), float(w.dt_min),
          float(w.dt_max)};
}

// The output and the states of a forward over `seqs`.
void check_forward(const cpu::SsdParams& p, MatView x, MatView y, MatView states, const SeqBatch& seqs) {
  check_shape("ssd_scan", "y", y, x.rows, x.cols, x.device);
  check_shape("ssd_scan", "states", states, states.rows, p.nheads * p.headdim * p.d_state, x.device);
  check_dtype("ssd_scan", "y", y.dtype, DType::F32);
  check_dtype("ssd_scan", "states", states.dtype, DType::F32);
  if (states.ld != states.cols) fail("[ssd_scan] states must be contiguous");
  seqs.check("ssd_scan", x.rows, x.device, states.rows);
}

#if MAMBA2_HAVE_CUDA
cuda::SsdParams cuda_params(const cpu::SsdParams& p) {
  return {p.nheads, p.headdim, p.ngroups, p.d_state, p.dt_bias, p.A_log, p.D, p.dt_min, p.dt_max};
}
#endif

}  // namespace

void ssd_scan(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y, MatView states,
              const SeqBatch& seqs, DType compute) {
  const auto p = params(w, x, B, C, dt, x.rows, x.device);
  check_forward(p, x, y, states, seqs);
  // x, B and C in fp32, or on the GPU in the compute dtype (as the conv leaves them there).
  if (x.dtype != DType::F32 && !(x.device == Device::CUDA && x.dtype == compute))
    fail("[ssd_scan] x, B and C are {}: the {} scan takes them in F32 (on the GPU also in its compute dtype)",
         dtype_name(x.dtype), dtype_name(compute));
  if (x.rows == 0) return;
  if (x.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::ssd_scan_forward(cuda_params(p), x.ptr, x.ld, B.ptr, B.ld, C.ptr, C.ld, x.dtype, dt.data(), dt.ld, y.data(),
                           y.ld, states.data(), seqs.packed(), seqs.chunk_size(), compute);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  for (int64_t s = 0; s < seqs.count(); ++s) {
    const int64_t t0 = seqs.starts()[size_t(s)], L = seqs.lengths()[size_t(s)];
    cpu::ssd_scan_forward(p, x.row(t0), x.ld, B.row(t0), B.ld, C.row(t0), C.ld, dt.row(t0), dt.ld, y.row(t0), y.ld,
                          states.row(seqs.slots()[size_t(s)]), L, seqs.chunk_size());
  }
}

int64_t ssd_step_sum_count(int64_t nheads, int64_t headdim) {
#if MAMBA2_HAVE_CUDA
  return cuda::ssd_step_sum_count(nheads, headdim);
#else
  (void)nheads, (void)headdim;
  no_cuda_backend(__func__);
#endif
}

void ssd_step(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView y, MatView states,
              const SeqBatch& seqs, MatView z, MatView gate_sums, const Tensor* warm) {
  const auto p = params(w, x, B, C, dt, x.rows, x.device);
  check_forward(p, x, y, states, seqs);
  check_dtype("ssd_scan", "x, B and C of a decode step", x.dtype, DType::F32);
  if (seqs.count() != x.rows) fail("[ssd_scan] a decode step takes one token per sequence");
  if (z.ptr) {
    if (x.device != Device::CUDA) fail("[ssd_scan] the gated decode step runs on the GPU only");
    check_shape("ssd_scan", "z", z, x.rows, x.cols, x.device);
    check_dtype("ssd_scan", "z", z.dtype, DType::F32);
  }
  if (gate_sums.ptr) {
    if (!z.ptr) fail("[ssd_scan] the sums of y² come with the gate");
    check_shape("ssd_scan", "gate_sums", gate_sums, x.rows, ssd_step_sum_count(p.nheads, p.headdim), x.device);
    check_dtype("ssd_scan", "gate_sums", gate_sums.dtype, DType::F32);
  }
  if (x.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::ssd_step(cuda_params(p), x.data(), x.ld, B.data(), B.ld, C.data(), C.ld, dt.data(), dt.ld, y.data(), y.ld,
                   states.data(), seqs.device_slots(), x.rows, z.ptr ? z.data() : nullptr, z.ld,
                   gate_sums.ptr ? gate_sums.data() : nullptr, gate_sums.ld, l2_warm(warm));
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::ssd_step(p, x.data(), x.ld, B.data(), B.ld, C.data(), C.ld, dt.data(), dt.ld, y.data(), y.ld, states.data(),
                seqs.slots().data(), x.rows);
}

void ssd_scan_backward(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView state0, MatView d_y,
                       MatView d_state_final, const SsdGrads& g, int64_t chunk_size) {
  const int64_t L = x.rows;
  const auto p = params(w, x, B, C, dt, L);
  const int64_t S = p.headdim * p.d_state;
  check_shape("ssd_scan", "d_y", d_y, L, x.cols);
  check_shape("ssd_scan", "d_x", g.x, L, x.cols);
  check_shape("ssd_scan", "d_B", g.B, L, B.cols);
  check_shape("ssd_scan", "d_C", g.C, L, C.cols);
  check_shape("ssd_scan", "d_dt", g.dt, L, dt.cols);
  for (const auto& [what, m] : {std::pair{"state0", state0}, {"d_state_final", d_state_final}, {"d_state0", g.state0}}) {
    if (!m.data()) continue;
    check_shape("ssd_scan", what, m, p.nheads, S);
    if (m.ld != S) fail("[ssd_scan] {} must be contiguous", what);
  }
  check_len("ssd_scan", "d_dt_bias", g.dt_bias, p.nheads);
  check_len("ssd_scan", "d_A_log", g.A_log, p.nheads);
  check_len("ssd_scan", "d_D", g.D, p.nheads);
  if (chunk_size <= 0) fail("[ssd_scan] chunk_size must be positive, got {}", chunk_size);
  if (L == 0) {  // nothing scanned: the final state is the initial one
    for (int64_t i = 0; g.state0.data() && i < p.nheads * S; ++i)
      g.state0.data()[i] = d_state_final.data() ? d_state_final.data()[i] : 0.0f;
    return;
  }
  const cpu::SsdGradsT<float> grads{g.x.data(),      g.x.ld,         g.B.data(),     g.B.ld,       g.C.data(),
                                    g.C.ld,        g.dt.data(),      g.dt.ld,      g.state0.data(), g.dt_bias.data(),
                                    g.A_log.data(), g.D.data()};
  cpu::ssd_scan_backward(p, x.data(), x.ld, B.data(), B.ld, C.data(), C.ld, dt.data(), dt.ld, state0.data(), d_y.data(), d_y.ld,
                         d_state_final.data(), grads, L, chunk_size);
}

}  // namespace mamba2::ops
