#include <algorithm>
#include <cstdint>
#include <tuple>
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

// The backward's x (with B, C and d_y) and d_dt: fp32, or on the GPU the compute dtype (the
// operands as the forward's products rounded them; d_dt as in_proj's backward takes it).
void check_f32_or_compute(const char* what, DType got, Device dev, DType compute) {
  if (got != DType::F32 && !(dev == Device::CUDA && got == compute))
    fail("[ssd_scan] {} is {}, expected F32 or (on the GPU) the compute dtype, {}", what, dtype_name(got),
         dtype_name(compute));
}

// The output and the states of a forward over `seqs`; y in fp32 unless narrow_y (checked by the caller).
void check_forward(const cpu::SsdParams& p, MatView x, MatView y, MatView states, const SeqBatch& seqs,
                   bool narrow_y = false) {
  check_shape("ssd_scan", "y", y, x.rows, x.cols, x.device);
  check_shape("ssd_scan", "states", states, states.rows, p.nheads * p.headdim * p.d_state, x.device);
  if (!narrow_y) check_dtype("ssd_scan", "y", y.dtype, DType::F32);
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
  // x, B and C in fp32, or on the GPU in the compute dtype (as the conv leaves them there); y
  // likewise (mixed-precision training's, rounded once).
  const bool narrow_ok = x.device == Device::CUDA && compute != DType::F32;
  if (y.dtype != DType::F32 && !(narrow_ok && y.dtype == compute))
    fail("[ssd_scan] y is {}: the {} scan writes F32 (on the GPU also its compute dtype)", dtype_name(y.dtype),
         dtype_name(compute));
  check_forward(p, x, y, states, seqs, true);
  if (x.dtype != DType::F32 && !(x.device == Device::CUDA && x.dtype == compute))
    fail("[ssd_scan] x, B and C are {}: the {} scan takes them in F32 (on the GPU also in its compute dtype)",
         dtype_name(x.dtype), dtype_name(compute));
  if (x.rows == 0) return;
  if (x.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::ssd_scan_forward(cuda_params(p), x.ptr, x.ld, B.ptr, B.ld, C.ptr, C.ld, x.dtype, dt.data(), dt.ld, y.ptr,
                           y.dtype, y.ld, states.data(), seqs.packed(), seqs.chunk_size(), compute);
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

void ssd_scan_backward(const SsdWeights& w, MatView x, MatView B, MatView C, MatView dt, MatView states0, MatView d_y,
                       MatView d_states_final, const SsdGrads& g, const SeqBatch& seqs, DType compute) {
  const int64_t T = x.rows;
  const Device dev = x.device;
  const auto p = params(w, x, B, C, dt, T, dev);
  const int64_t S = p.nheads * p.headdim * p.d_state;
  // x, B, C and d_y in one dtype: F32, or on the GPU the compute dtype (the operands as rounded for
  // the forward's products, and d_y as its producer rounded it).
  const DType inputs = x.dtype;
  check_f32_or_compute("the backward's x", inputs, dev, compute);
  using Operand = std::tuple<const char*, const MatView*, int64_t>;
  for (auto [what, m, cols] : {Operand{"d_y", &d_y, x.cols}, Operand{"d_x", &g.x, x.cols}, Operand{"d_B", &g.B, B.cols},
                               Operand{"d_C", &g.C, C.cols}, Operand{"d_dt", &g.dt, dt.cols}}) {
    check_shape("ssd_scan", what, *m, T, cols, dev);
    if (m == &d_y) check_dtype("ssd_scan", what, m->dtype, inputs);
    else if (m != &g.dt) check_dtype("ssd_scan", what, m->dtype, DType::F32);
  }
  check_f32_or_compute("d_dt", g.dt.dtype, dev, compute);
  int64_t rows = INT64_MAX;  // slots index the state rows given, if any
  for (const auto& [what, m] : {std::pair{"states0", states0}, {"d_states_final", d_states_final}, {"d_state0", g.state0}}) {
    if (!m.ptr) continue;
    check_shape("ssd_scan", what, m, m.rows, S, dev);
    check_dtype("ssd_scan", what, m.dtype, DType::F32);
    if (m.ld != S) fail("[ssd_scan] {} must be contiguous", what);
    rows = std::min(rows, m.rows);
  }
  seqs.check("ssd_scan", T, dev, rows);
  check_len("ssd_scan", "d_dt_bias", g.dt_bias, p.nheads, dev);
  check_len("ssd_scan", "d_A_log", g.A_log, p.nheads, dev);
  check_len("ssd_scan", "d_D", g.D, p.nheads, dev);
  if (!(compute == DType::F32 || (dev == Device::CUDA && (compute == DType::BF16 || compute == DType::F16))))
    fail("[ssd_scan] the backward computes in F32 (on the GPU also in BF16 or F16), not {} on the {}",
         dtype_name(compute), device_name(dev));
  if (T == 0) return;
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    auto ptr = [](const MatView& m) { return m.ptr ? m.data() : nullptr; };
    const cuda::SsdGradPtrs grads{g.x.data(),    g.x.ld,        g.B.data(),       g.B.ld,
                                  g.C.data(),    g.C.ld,        g.dt.ptr,         g.dt.dtype,
                                  g.dt.ld,       ptr(g.state0), g.dt_bias.data(), g.A_log.data(),
                                  g.D.data()};
    cuda::ssd_scan_backward(cuda_params(p), x.ptr, x.ld, B.ptr, B.ld, C.ptr, C.ld, dt.data(), dt.ld, ptr(states0),
                            d_y.ptr, d_y.ld, inputs, ptr(d_states_final), grads, seqs.packed(), seqs.chunk_size(),
                            compute);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  for (int64_t s = 0; s < seqs.count(); ++s) {
    const int64_t t0 = seqs.starts()[size_t(s)], L = seqs.lengths()[size_t(s)], slot = seqs.slots()[size_t(s)];
    auto row = [&](const MatView& m) { return m.ptr ? m.row(slot) : nullptr; };
    const cpu::SsdGradsT<float> grads{g.x.row(t0), g.x.ld,       g.B.row(t0),  g.B.ld,           g.C.row(t0),
                                      g.C.ld,      g.dt.row(t0), g.dt.ld,      row(g.state0),    g.dt_bias.data(),
                                      g.A_log.data(), g.D.data()};
    cpu::ssd_scan_backward(p, x.row(t0), x.ld, B.row(t0), B.ld, C.row(t0), C.ld, dt.row(t0), dt.ld, row(states0),
                           d_y.row(t0), d_y.ld, row(d_states_final), grads, L, seqs.chunk_size());
  }
}

}  // namespace mamba2::ops
