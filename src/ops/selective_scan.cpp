#include "cpu/kernels.h"
#include "ops/check.h"
#include "ops/ops.h"

namespace mamba2::ops {

namespace {

constexpr const char* kOp = "selective_scan";

// The kernels' parameters, every operand's shape checked; states' width per slot returned in `width`.
cpu::SelectiveScanParams params(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z,
                                MatView y, MatView states, const SeqBatch& seqs) {
  if (x.device != Device::CPU) fail("[{}] runs on the CPU only, for now", kOp);
  if (w.A_log.rank() != 2) fail("[{}] A_log must be (channels, d_state), got {}", kOp, shape_str(w.A_log.shape()));
  const int64_t Dc = w.A_log.dim(0), N = w.A_log.dim(1), bw = w.A_imag ? 2 * N : N;
  check_len(kOp, "A_log", w.A_log, Dc * N);
  if (w.A_imag && w.A_imag->shape() != w.A_log.shape())
    fail("[{}] A_imag is {}, A_log {}: they must have one shape", kOp, shape_str(w.A_imag->shape()),
         shape_str(w.A_log.shape()));
  if (w.A_imag) check_len(kOp, "A_imag", *w.A_imag, Dc * N);
  check_len(kOp, "D", w.D, Dc);
  check_len(kOp, "dt_bias", w.dt_bias, Dc);
  const int64_t T = x.rows;
  check_shape(kOp, "x", x, T, Dc);
  check_shape(kOp, "dt", dt, T, Dc);
  check_shape(kOp, w.A_imag ? "B (complex: 2·d_state interleaved)" : "B", B, T, bw);
  check_shape(kOp, w.A_imag ? "C (complex: 2·d_state interleaved)" : "C", C, T, bw);
  if (z.ptr) check_shape(kOp, "z", z, T, Dc);
  check_shape(kOp, "y", y, T, Dc);
  check_shape(kOp, "states", states, states.rows, Dc * bw);
  if (states.ld != states.cols) fail("[{}] states must be contiguous", kOp);
  seqs.check(kOp, T, Device::CPU, states.rows);
  return {Dc, N, w.A_log.data(), w.A_imag ? w.A_imag->data() : nullptr, w.D.data(), w.dt_bias.data()};
}

}  // namespace

void selective_scan(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z, MatView y,
                    MatView states, const SeqBatch& seqs) {
  const cpu::SelectiveScanParams p = params(w, x, dt, B, C, z, y, states, seqs);
  for (int64_t s = 0; s < seqs.count(); ++s) {
    const int64_t t0 = seqs.starts()[size_t(s)];
    cpu::selective_scan_forward(p, x.row(t0), x.ld, dt.row(t0), dt.ld, B.row(t0), B.ld, C.row(t0), C.ld,
                                z.ptr ? z.row(t0) : nullptr, z.ld, y.row(t0), y.ld, states.row(seqs.slots()[size_t(s)]),
                                seqs.lengths()[size_t(s)]);
  }
}

void selective_scan_step(const SelectiveScanWeights& w, MatView x, MatView dt, MatView B, MatView C, MatView z,
                         MatView y, MatView states, const SeqBatch& seqs) {
  const cpu::SelectiveScanParams p = params(w, x, dt, B, C, z, y, states, seqs);
  if (seqs.count() != x.rows) fail("[{}] a decode step takes one token per sequence", kOp);
  cpu::selective_scan_step(p, x.data(), x.ld, dt.data(), dt.ld, B.data(), B.ld, C.data(), C.ld,
                           z.ptr ? z.data() : nullptr, z.ld, y.data(), y.ld, states.data(), seqs.slots().data(),
                           x.rows);
}

}  // namespace mamba2::ops
