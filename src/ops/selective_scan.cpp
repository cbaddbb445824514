#include <algorithm>
#include <tuple>

#include "cpu/kernels.h"
#include "cuda/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

namespace {

constexpr const char* kOp = "selective_scan";

// The kernels' parameters, the weights' and the tokens' operands checked (y: the output, or d_y),
// all fp32 on x's device.
cpu::SelectiveScanParams params(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z,
                                MatView y) {
  const Device dev = x.device;
  if (w.A_log.rank() != 2) fail("[{}] A_log must be (channels, d_state), got {}", kOp, shape_str(w.A_log.shape()));
  const int64_t Dc = w.A_log.dim(0), N = w.A_log.dim(1), bw = w.A_imag ? 2 * N : N;
  check_len(kOp, "A_log", w.A_log, Dc * N, dev);
  if (w.A_imag && w.A_imag->shape() != w.A_log.shape())
    fail("[{}] A_imag is {}, A_log {}: they must have one shape", kOp, shape_str(w.A_imag->shape()),
         shape_str(w.A_log.shape()));
  if (w.A_imag) check_len(kOp, "A_imag", *w.A_imag, Dc * N, dev);
  check_len(kOp, "D", w.D, Dc, dev);
  check_len(kOp, "dt_bias", w.dt_bias, Dc, dev);
  const int64_t T = x.rows;
  check_shape(kOp, "x", x, T, Dc, dev);
  check_shape(kOp, "dt", dt, T, Dc, dev);
  check_shape(kOp, w.A_imag ? "B (complex: 2·d_state interleaved)" : "B", B, T, bw, dev);
  check_shape(kOp, w.A_imag ? "C (complex: 2·d_state interleaved)" : "C", C, T, bw, dev);
  if (z.ptr) check_shape(kOp, "z", z, T, Dc, dev);
  check_shape(kOp, "y", y, T, Dc, dev);
  for (const auto& [what, m] : {std::pair{"x", &x}, {"dt", &dt}, {"B", &B}, {"C", &C}, {"y", &y}})
    check_dtype(kOp, what, m->dtype, DType::F32);
  if (z.ptr) check_dtype(kOp, "z", z.dtype, DType::F32);
  return {Dc, N, w.A_log.data(), w.A_imag ? w.A_imag->data() : nullptr, w.D.data(), w.dt_bias.data()};
}

// A state row's width: channels × d_state, twice that for the complex scan.
int64_t state_width(const SelectiveScanWeights& w) { return w.A_log.numel() * (w.A_imag ? 2 : 1); }

// A state buffer (rows by slot) of the width the weights make, on `dev`.
void check_states(const SelectiveScanWeights& w, const char* what, MatView states, Device dev) {
  check_shape(kOp, what, states, states.rows, state_width(w), dev);
  check_dtype(kOp, what, states.dtype, DType::F32);
  if (states.ld != states.cols) fail("[{}] {} must be contiguous", kOp, what);
}

// The checkpoints' shape (GPU only): checkpoint rows × the state width, fp32, contiguous.
void check_checkpoints(const SelectiveScanWeights& w, MatView ckpt, const SeqBatch& seqs, Device dev) {
  if (!ckpt.ptr) return;
  if (dev != Device::CUDA) fail("[{}] checkpoints are the GPU backward's; the CPU takes none", kOp);
  check_shape(kOp, "checkpoints", ckpt, selective_scan_checkpoint_rows(w, seqs), state_width(w), dev);
  check_dtype(kOp, "checkpoints", ckpt.dtype, DType::F32);
  if (ckpt.ld != ckpt.cols) fail("[{}] checkpoints must be contiguous", kOp);
}

#if MAMBA2_HAVE_CUDA
cuda::SelectiveScanParams cuda_params(const cpu::SelectiveScanParams& p) {
  return {p.channels, p.d_state, p.A_log, p.A_imag, p.D, p.dt_bias};
}
#endif

}  // namespace

int64_t selective_scan_checkpoint_rows(const SelectiveScanWeights& w, const SeqBatch& seqs) {
#if MAMBA2_HAVE_CUDA
  return cuda::selective_scan_checkpoint_rows(seqs.tokens(), seqs.count(), w.A_imag != nullptr);
#else
  (void)w, (void)seqs;
  no_cuda_backend(__func__);
#endif
}

void selective_scan(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z, MatView y,
                    MatView states, const SeqBatch& seqs, MatView checkpoints) {
  // y checked here (the GPU may write it rounded: out_proj's input); x stands in for it below.
  const cpu::SelectiveScanParams p = params(w, x, dt, B, C, z, x);
  check_shape(kOp, "y", y, x.rows, x.cols, x.device);
  check_projection_operand_dtype(kOp, "y", y.dtype, x.device);
  check_states(w, "states", states, x.device);
  seqs.check(kOp, x.rows, x.device, states.rows);
  check_checkpoints(w, checkpoints, seqs, x.device);
  if (x.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::selective_scan_forward(cuda_params(p), x.data(), x.ld, dt.data(), dt.ld, B.data(), B.ld, C.data(), C.ld,
                                 z.ptr ? z.data() : nullptr, z.ld, y.ptr, y.dtype, y.ld, states.data(), seqs.packed(),
                                 checkpoints.ptr ? checkpoints.data() : nullptr);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::selective_scan_prefill(p, x.data(), x.ld, dt.data(), dt.ld, B.data(), B.ld, C.data(), C.ld,
                              z.ptr ? z.data() : nullptr, z.ld, y.data(), y.ld, states.data(), seqs.starts().data(),
                              seqs.slots().data(), seqs.count());
}

void selective_scan_step(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z,
                         MatView y, MatView states, const SeqBatch& seqs) {
  const cpu::SelectiveScanParams p = params(w, x, dt, B, C, z, y);
  check_states(w, "states", states, x.device);
  seqs.check(kOp, x.rows, x.device, states.rows);
  if (seqs.count() != x.rows) fail("[{}] a decode step takes one token per sequence", kOp);
  if (x.device == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    cuda::selective_scan_step(cuda_params(p), x.data(), x.ld, dt.data(), dt.ld, nullptr, 0, B.data(), B.ld, C.data(),
                              C.ld, z.ptr ? z.data() : nullptr, z.ld, y.ptr, y.dtype, y.ld, states.data(),
                              seqs.device_slots(), x.rows);
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  cpu::selective_scan_step(p, x.data(), x.ld, dt.data(), dt.ld, B.data(), B.ld, C.data(), C.ld,
                           z.ptr ? z.data() : nullptr, z.ld, y.data(), y.ld, states.data(), seqs.slots().data(),
                           x.rows);
}

void selective_scan_step_fused(const SelectiveScanWeights& w, MatView x, MatView dt_low, const Tensor& dt_proj,
                               MatView B, MatView C, MatView z, MatView y, MatView states, const SeqBatch& seqs) {
  const Device dev = x.device;
  if (dev != Device::CUDA) fail("[{}] the fused decode step runs on the GPU only", kOp);
  // dt_low and y checked here; x stands in for dt and y in the common checks (their shapes).
  [[maybe_unused]] const cpu::SelectiveScanParams p = params(w, x, x, B, C, z, x);  // unused without CUDA
  const int64_t R = dt_low.cols;
  if (dt_proj.rank() != 2 || dt_proj.dim(0) != x.cols || dt_proj.dim(1) != R)
    fail("[{}] dt_proj is {}, expected ({}, {})", kOp, shape_str(dt_proj.shape()), x.cols, R);
  check_len(kOp, "dt_proj", dt_proj, x.cols * R, dev);
  check_shape(kOp, "dt_low", dt_low, x.rows, R, dev);
  check_dtype(kOp, "dt_low", dt_low.dtype, DType::F32);
  check_shape(kOp, "y", y, x.rows, x.cols, dev);
  if (y.dtype != DType::F32 && y.dtype != DType::BF16 && y.dtype != DType::F16)
    fail("[{}] y is {}: the fused step writes F32, BF16 or F16", kOp, dtype_name(y.dtype));
  check_states(w, "states", states, dev);
  seqs.check(kOp, x.rows, dev, states.rows);
  if (seqs.count() != x.rows) fail("[{}] a decode step takes one token per sequence", kOp);
#if MAMBA2_HAVE_CUDA
  cuda::selective_scan_step(cuda_params(p), x.data(), x.ld, dt_low.data(), dt_low.ld, dt_proj.data(), R, B.data(), B.ld,
                            C.data(), C.ld, z.ptr ? z.data() : nullptr, z.ld, y.ptr, y.dtype, y.ld, states.data(),
                            seqs.device_slots(), x.rows);
#else
  no_cuda_backend(__func__);
#endif
}

void selective_scan_backward(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z,
                             MatView states0, MatView d_y, MatView d_states_final, const SelectiveScanGrads& g,
                             const SeqBatch& seqs, MatView checkpoints) {
  const int64_t T = x.rows;
  const Device dev = x.device;
  const cpu::SelectiveScanParams p = params(w, x, dt, B, C, z, d_y);
  int64_t rows = INT64_MAX;  // slots index the state rows given, if any
  for (const auto& [what, m] : {std::pair{"states0", states0}, {"d_states_final", d_states_final}, {"d_state0", g.state0}}) {
    if (!m.ptr) continue;
    check_states(w, what, m, dev);
    rows = std::min(rows, m.rows);
  }
  seqs.check(kOp, T, dev, rows);
  using Operand = std::tuple<const char*, const MatView*, int64_t>;
  for (auto [what, m, cols] : {Operand{"d_x", &g.x, x.cols}, Operand{"d_dt", &g.dt, x.cols},
                               Operand{"d_B", &g.B, B.cols}, Operand{"d_C", &g.C, C.cols}}) {
    check_shape(kOp, what, *m, T, cols, dev);
    check_dtype(kOp, what, m->dtype, DType::F32);
  }
  if (z.ptr) {
    check_shape(kOp, "d_z", g.z, T, x.cols, dev);
    check_projection_operand_dtype(kOp, "d_z", g.z.dtype, dev);
  }
  check_len(kOp, "d_A_log", g.A_log, w.A_log.numel(), dev);
  if (w.A_imag) {
    if (!g.A_imag) fail("[{}] the complex scan's backward needs d_A_imag", kOp);
    check_len(kOp, "d_A_imag", *g.A_imag, w.A_log.numel(), dev);
  }
  check_len(kOp, "d_D", g.D, w.D.numel(), dev);
  check_len(kOp, "d_dt_bias", g.dt_bias, w.dt_bias.numel(), dev);
  check_checkpoints(w, checkpoints, seqs, dev);
  if (dev == Device::CUDA) {
#if MAMBA2_HAVE_CUDA
    const auto ptr = [](const MatView& m) { return m.ptr ? m.data() : nullptr; };
    const cuda::SelectiveScanGradPtrs gp{g.x.data(), g.x.ld, g.dt.data(), g.dt.ld, g.B.data(), g.B.ld, g.C.data(),
                                         g.C.ld, g.z.ptr, g.z.dtype, g.z.ld, ptr(g.state0), g.A_log.data(),
                                         g.A_imag ? g.A_imag->data() : nullptr, g.D.data(), g.dt_bias.data()};
    // The rows the slots index (without checkpoints the backward copies the start states to form them).
    int64_t state_rows = 0;
    if (!checkpoints.ptr)
      for (int64_t slot : seqs.slots()) state_rows = std::max(state_rows, slot + 1);
    cuda::selective_scan_backward(cuda_params(p), x.data(), x.ld, dt.data(), dt.ld, B.data(), B.ld, C.data(), C.ld,
                                  ptr(z), z.ld, ptr(states0), state_rows, d_y.data(), d_y.ld, ptr(d_states_final),
                                  ptr(checkpoints), gp, seqs.packed());
#else
    no_cuda_backend(__func__);
#endif
    return;
  }
  for (int64_t s = 0; s < seqs.count(); ++s) {
    const int64_t t0 = seqs.starts()[size_t(s)], slot = seqs.slots()[size_t(s)];
    auto row = [&](const MatView& m) { return m.ptr ? m.row(slot) : nullptr; };
    const cpu::SelectiveScanGradsT<float> grads{
        g.x.row(t0), g.x.ld, g.dt.row(t0), g.dt.ld, g.B.row(t0), g.B.ld, g.C.row(t0), g.C.ld,
        z.ptr ? g.z.row(t0) : nullptr, g.z.ld, row(g.state0), g.A_log.data(), g.A_imag ? g.A_imag->data() : nullptr,
        g.D.data(), g.dt_bias.data()};
    cpu::selective_scan_backward(p, x.row(t0), x.ld, dt.row(t0), dt.ld, B.row(t0), B.ld, C.row(t0), C.ld,
                                 z.ptr ? z.row(t0) : nullptr, z.ld, row(states0), d_y.row(t0), d_y.ld,
                                 row(d_states_final), grads, seqs.lengths()[size_t(s)]);
  }
}

}  // namespace mamba2::ops
